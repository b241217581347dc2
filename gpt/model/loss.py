"""The language-model loss: mean cross-entropy of hidden @ weight.T, chunk by chunk, so that
the full (positions, vocabulary) logits never exist.

GPT.forward with targets calls `lm_loss`; tests/test_loss.py checks it against F.cross_entropy on
full logits in float64, and bench/memory.py measures the memory it saves.
"""

from __future__ import annotations

from typing import Any

import torch

LOSS_CHUNK_LOGITS = 2**26
"""Logits per chunk of the loss (256 MB in float32): 1,335 positions of GPT-2's vocabulary, so
batch 64 x 1024 runs in 50 chunks instead of holding 3.3e9 logits several times over."""


def loss_chunk_rows(vocab_size: int) -> int:
    """Positions per chunk of the loss for a vocabulary of vocab_size (at least one)."""
    return max(1, LOSS_CHUNK_LOGITS // vocab_size)


def chunk_loss(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, with_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Summed cross-entropy of the logits h @ weight.T of one chunk, and, if with_grad, its
    gradient with respect to those logits, softmax - one_hot, in h's dtype.

    h (n, C), weight (V, C), targets (n,). The logits come out of the matmul in h's dtype (as
    F.linear under autocast) and are reduced in float32, or float64 for float64 inputs (as
    F.cross_entropy does under autocast).
    """
    logits = h @ weight.T  # (n, V); a new tensor, reused in place below
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    lse = torch.logsumexp(logits, dim=-1)  # (n,)
    loss = lse.sum() - logits.gather(1, targets[:, None]).sum()
    if not with_grad:
        return loss, None
    probs = logits.sub_(lse[:, None]).exp_()  # softmax, in the logits' memory
    probs.scatter_add_(1, targets[:, None], probs.new_full((targets.numel(), 1), -1.0))
    return loss, probs.to(h.dtype)


class ChunkedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of hidden @ weight.T, chunk by chunk, gradients made in the forward.

    Each chunk's logits live only while that chunk is processed: its loss and its gradients
    (d hidden rows, and its share of d weight, accumulated in place) are computed right away,
    so the backward only scales them by the incoming gradient. The matmuls are those of the
    plain computation (logits, d hidden, d weight), none recomputed; the extra memory is one
    chunk's logits plus one hidden-sized and one weight-sized gradient buffer. In bf16 the
    weight gradient accumulates in bf16 (each addmm_ sums in float32 inside), as PyTorch's own
    chunked loss does on CUDA (its "compact" policy): a float32 buffer would cost one
    weight-sized conversion per chunk.
    """

    @staticmethod
    def forward(
        ctx: Any, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int
    ) -> torch.Tensor:
        grad_h = torch.empty_like(h)  # (N, C)
        grad_w = torch.zeros_like(weight)  # (V, C), accumulated over chunks
        loss = torch.zeros((), dtype=torch.promote_types(h.dtype, torch.float32), device=h.device)
        for start in range(0, h.size(0), rows):
            h_c, t_c = h[start : start + rows], targets[start : start + rows]
            chunk, grad_logits = chunk_loss(h_c, weight, t_c, with_grad=True)
            assert grad_logits is not None
            loss += chunk
            grad_h[start : start + rows] = grad_logits @ weight  # (n, C)
            grad_w.addmm_(grad_logits.T, h_c)  # (V, n) @ (n, C)
        ctx.save_for_backward(grad_h, grad_w)
        return loss / h.size(0)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        grad_h, grad_w = ctx.saved_tensors
        scale = grad_out / grad_h.size(0)  # d mean / d sum
        return grad_h * scale.to(grad_h.dtype), grad_w * scale.to(grad_w.dtype), None, None


def lm_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Mean cross-entropy (float32; float64 for float64 inputs) of the logits
    hidden @ weight.T against targets, computed over chunks of chunk_rows positions (default
    `loss_chunk_rows`), so that the full (positions, V) logits never exist.

    hidden (..., C), weight (V, C), targets (...) int64. Under autocast the matmuls run in the
    autocast dtype, as F.linear's would. PyTorch 2.13's chunked F.linear_cross_entropy was
    the first choice, but it returns the loss in the input dtype: under bf16 a loss of 3.07
    would be logged in steps of 0.016.
    """
    h = hidden.reshape(-1, hidden.size(-1))  # (N, C)
    t = targets.reshape(-1)  # (N,)
    device_type = h.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        h, weight = h.to(dtype), weight.to(dtype)
    rows = chunk_rows or loss_chunk_rows(weight.size(0))
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return ChunkedCrossEntropy.apply(h, weight, t, rows)
    total = sum(
        chunk_loss(h[i : i + rows], weight, t[i : i + rows], with_grad=False)[0]
        for i in range(0, h.size(0), rows)
    )
    return total / h.size(0)
