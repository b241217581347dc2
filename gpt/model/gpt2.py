"""The GPT-2 model: exactly OpenAI's architecture, with Hugging Face parameter names.

Learned position embeddings, pre-LayerNorm blocks with biases, fused QKV projection, GELU (tanh),
4x MLP, final LayerNorm and an lm_head tied to the token embedding. Parameter names match
`transformers.GPT2LMHeadModel` (`transformer.h.0.attn.c_attn.weight`, ...), so conversion is a
key copy plus a short list of transposed Conv1D weights (see gpt/hf.py).

Generation uses a preallocated key/value cache: the prompt is run once (prefill), then each new
token costs one single-position forward pass. Decoding reads every weight once per token, so on
CPU the projections are used through copies laid out for it (see `decoding_layouts`): for one
sequence the lm_head reads a contiguous input-major copy of the embedding (`C x V`), ~2.5x
faster than the `V x C` storage; a batch goes through oneDNN's packed weights.

The module knows nothing of DDP, compile or autocast: the trainer applies them from outside.

    >>> from gpt.config import model_preset
    >>> model = GPT(model_preset("tiny"))
    >>> model.generate(torch.zeros(1, 1, dtype=torch.long), 5, temperature=0).shape
    torch.Size([1, 6])
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from gpt.cli import UserError
from gpt.config import GPTConfig

if TYPE_CHECKING:
    from gpt.data.tokeniser import Tokeniser


class KVCache:
    """Preallocated keys and values of every layer for a batch, filled from position 0 on
    (positions at or after `length` are never read, so the buffers start uninitialised)."""

    def __init__(
        self,
        config: GPTConfig,
        batch_size: int,
        capacity: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        shape = (config.n_layer, batch_size, config.n_head, capacity, config.head_dim)
        self.k = torch.empty(shape, device=device, dtype=dtype)  # (L, B, nh, S, hs)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.capacity = capacity
        self.length = 0
        """Positions filled so far; the next token goes to position `length`."""

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (B, nh, S, hs) key and value buffers of layer i."""
        return self.k[i], self.v[i]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through F.scaled_dot_product_attention."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # fused q, k, v
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.c_proj.residual_scaled_init = True  # type: ignore[assignment]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    """Position-wise feed-forward network: 4x expansion with tanh-approximated GELU."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.c_proj.residual_scaled_init = True  # type: ignore[assignment]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token of each row of logits (B, V) -> (B,) int64.

    temperature 0 is greedy (argmax). top_k keeps the k most likely tokens; top_p keeps the
    smallest set of most likely tokens whose probability reaches top_p (nucleus sampling), the
    most likely token always included. Both may be combined (top_k first).
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is None and top_p is None:
        probs = F.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    if top_k is not None and top_k < logits.size(-1):
        logits, ids = torch.topk(logits, top_k, dim=-1)  # (B, k), sorted descending
    else:
        logits, ids = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = F.softmax(logits, dim=-1)
    if top_p is not None:
        mass_before = probs.cumsum(dim=-1) - probs  # probability of the more likely tokens
        probs = probs.masked_fill(mass_before >= top_p, 0.0)
    choice = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
    return ids.gather(-1, choice).squeeze(1)


def check_sampling(
    temperature: float, top_k: int | None, top_p: float | None, max_new_tokens: int
) -> None:
    """Refuse meaningless sampling settings with a UserError naming the setting (they come
    from flags)."""
    if temperature < 0 or not math.isfinite(temperature):
        raise UserError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise UserError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"top_p must be in (0, 1], got {top_p}")
    if max_new_tokens < 0:
        raise UserError(f"max_new_tokens must be >= 0, got {max_new_tokens}")


def packing_available() -> bool:
    """Whether oneDNN can pre-pack linear weights on this build (x86 and ARM CPU builds)."""
    ops = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


class Projection:
    """y = x W^T + b for rows x (N, in), with W (out, in) in the layout chosen for decoding.

    "view": the parameter itself (what F.linear does); "input-major": a contiguous (in, out)
    copy, which streams memory fastest for one row when out > in; "packed": oneDNN's blocked
    copy, fastest for a few rows (a batch of sequences).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, layout: str, rows: int):
        self.bias = bias
        self.packed = layout == "packed"
        if self.packed:
            try:
                self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
            except RuntimeError:  # a dtype (float64, float16 on most CPUs) oneDNN cannot pack
                self.packed = False
                self.weight = weight.t()
        elif layout == "input-major":
            self.weight = weight.t().contiguous()  # (in, out)
        else:
            self.weight = weight.t()  # (in, out) view of the (out, in) storage

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        if self.bias is None:
            return x @ self.weight
        return torch.addmm(self.bias, x, self.weight)


class LayerWeights(NamedTuple):
    """One block's four projections for decoding."""

    attn: Projection
    attn_proj: Projection
    fc: Projection
    mlp_proj: Projection


def decoding_layouts(device: torch.device, batch_size: int) -> dict[str, str]:
    """The layout of each projection kind for decoding `batch_size` sequences on `device`.

    Decoding reads every weight once per step, so the layout decides the speed (measured on
    CPU, 6 layers x 384 wide, see bench/generate.py): for one sequence the widening projections
    and the lm_head stream 1.5-2.5x faster from (in, out) copies than from their (out, in)
    storage, and the narrowing ones slightly faster from oneDNN's packed copies; a batch runs
    1.5-2.5x faster through packed weights everywhere. GPUs (and autocast, which the packed
    kernels ignore) use the parameters as they are.
    """
    if device.type != "cpu" or torch.is_autocast_enabled("cpu"):
        return dict.fromkeys(("widening", "narrowing", "head"), "view")
    packed = "packed" if packing_available() else "view"
    if batch_size > 1:
        return {"widening": packed, "narrowing": packed, "head": packed}
    return {"widening": "input-major", "narrowing": packed, "head": "input-major"}


class DecodingWeights:
    """The model's projections laid out for decoding a given batch size (see decoding_layouts).

    The copies cost up to the weights' own memory, for as long as the model keeps them (until
    the weights change or another batch size is decoded).
    """

    def __init__(self, model: GPT, key: tuple[Any, ...], batch_size: int) -> None:
        self.key = key
        # Keeping the parameters' storage alive means no new tensor can reuse their addresses,
        # so an unchanged (data_ptr, version) key really means unchanged weights.
        self.sources = [p.detach() for p in model.parameters()]
        w = model.lm_head.weight
        layouts = decoding_layouts(w.device, batch_size)

        def proj(linear: nn.Linear, kind: str) -> Projection:
            bias = linear.bias.detach() if linear.bias is not None else None
            return Projection(linear.weight.detach(), bias, layouts[kind], batch_size)

        self.layers = [
            LayerWeights(
                proj(b.attn.c_attn, "widening"),
                proj(b.attn.c_proj, "narrowing"),
                proj(b.mlp.c_fc, "widening"),
                proj(b.mlp.c_proj, "narrowing"),
            )
            for b in model.transformer.h
        ]
        real_rows = w.detach()[: model.config.vocab_size]  # (V, C): padded rows never predicted
        self.head = Projection(real_rows, None, layouts["head"], batch_size)
        self.dtype = w.dtype


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


class GPT(nn.Module):
    """GPT-2 language model with a tied lm_head."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying
        self.apply(self._init_weights)  # tied weight is visited once, through wte
        self._decoding: DecodingWeights | None = None
        """The weights laid out for decoding (see `_decoding_weights`)."""

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 init: N(0, 0.02); residual projections N(0, 0.02/sqrt(2*n_layer)); zero biases."""
        if isinstance(module, nn.Linear):
            if module is self.lm_head:
                return  # tied to wte, initialised there
            std = 0.02
            if getattr(module, "residual_scaled_init", False):
                std /= math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """idx (B, T) int64 -> (logits (B, T, vocab_size), None) without targets, or
        (None, mean cross-entropy) with targets (B, T).

        Logits cover the real vocabulary only: padded ids can never be predicted. With targets
        the logits are never materialised whole (see `lm_loss`), so none are returned.
        """
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        real_rows = self.lm_head.weight[: self.config.vocab_size]  # (V, C) view: no padded rows
        if targets is not None:
            return None, lm_loss(x, real_rows, targets)
        return F.linear(x, real_rows), None  # (B, T, V)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, tied embeddings counted once; non_embedding drops wpe and wte."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel() + self.transformer.wte.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token: 6N (forward + backward matmuls) plus attention 12*L*C*T.

        N excludes the position table (a lookup costs no FLOPs) but includes wte, whose tied
        lm_head matmul is real compute. Used to report MFU.
        """
        cfg = self.config
        T = seq_len if seq_len is not None else cfg.block_size
        n = self.num_params() - self.transformer.wpe.weight.numel()
        return 6 * n + 12 * cfg.n_layer * cfg.n_embd * T

    # ----------------------------------------------------------------------------------------
    # Generation

    def _decoding_weights(self, batch_size: int, device: torch.device) -> DecodingWeights:
        """The weights in decoding layout for batch_size sequences, rebuilt when the batch size,
        the autocast state or any parameter changed since last time.

        A parameter change is a new tensor or device (data_ptr) or an in-place update such as
        an optimizer step or load_state_dict (the tensor's version counter).
        """
        key = (
            decoding_layouts(device, batch_size),
            batch_size,
            *(
                (p.data_ptr(), 0 if p.is_inference() else p._version, p.dtype, p.device)
                for p in self.parameters()
            ),
        )
        if self._decoding is None or self._decoding.key != key:
            self._decoding = None  # free the old copies before making new ones
            self._decoding = DecodingWeights(self, key, batch_size)
        return self._decoding

    def _cached_forward(
        self, idx: torch.Tensor, cache: KVCache, weights: DecodingWeights
    ) -> torch.Tensor:
        """Run idx (B, T) from position cache.length on; logits of the last position (B, V).

        The same computation as forward, on 2-D rows (B*T, C) and the decoding weights. T > 1
        is a prefill, allowed on an empty cache only; T == 1 is one decoding step, which
        attends to every cached position.
        """
        B, T = idx.shape
        C, nh, pos = self.config.n_embd, self.config.n_head, cache.length
        x = self.transformer.wte(idx) + self.transformer.wpe.weight[pos : pos + T]  # (B, T, C)
        x = x.view(B * T, C)
        for i, (block, w) in enumerate(zip(self.transformer.h, weights.layers, strict=True)):
            qkv = w.attn(block.ln_1(x))  # (B*T, 3C)
            q, k, v = qkv.view(B, T, 3, nh, C // nh).permute(2, 0, 3, 1, 4)  # (B, nh, T, hs)
            k_cache, v_cache = cache.layer(i)
            k_cache[:, :, pos : pos + T] = k
            v_cache[:, :, pos : pos + T] = v
            if T == 1:
                k, v = k_cache[:, :, : pos + 1], v_cache[:, :, : pos + 1]  # (B, nh, pos+1, hs)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)  # (B, nh, T, hs)
            x = x + w.attn_proj(y.transpose(1, 2).reshape(B * T, C))
            x = x + w.mlp_proj(F.gelu(w.fc(block.ln_2(x)), approximate="tanh"))  # (B*T, C)
        cache.length = pos + T
        x = self.transformer.ln_f(x.view(B, T, C)[:, -1])  # (B, C): only the last position
        return weights.head(x)  # (B, V)

    def _decode(
        self,
        seq: torch.Tensor,
        prompt_len: int,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        eos_token: int | None,
        generator: torch.Generator | None,
    ) -> Iterator[torch.Tensor]:
        """Fill seq (B, prompt_len + new) from column prompt_len on, yielding each new column.

        Context longer than block_size: the prompt is cropped to its last block_size tokens.
        When the cache is full, the context is cropped to its last 3/4 * block_size tokens and
        the cache refilled from them (one prefill), so decoding continues with at least that
        much context and the refill cost is shared by block_size/4 new tokens.
        """
        B, total = seq.shape
        S = self.config.block_size
        keep = max(1, S - S // 4)
        start = max(0, prompt_len - S)
        capacity = min(S, total - start)
        weights = self._decoding_weights(B, seq.device)
        cache = KVCache(self.config, B, capacity, seq.device, weights.dtype)
        logits = self._cached_forward(seq[:, start:prompt_len], cache, weights)
        finished = torch.zeros(B, dtype=torch.bool, device=seq.device)
        for t in range(prompt_len, total):
            token = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
            if eos_token is not None:
                token.masked_fill_(finished, eos_token)
                finished |= token == eos_token
            seq[:, t] = token
            yield token
            if t + 1 == total or (eos_token is not None and bool(finished.all())):
                return
            if cache.length == cache.capacity:
                cache.length = 0
                logits = self._cached_forward(seq[:, t + 1 - keep : t + 1], cache, weights)
            else:
                logits = self._cached_forward(token[:, None], cache, weights)

    def _start(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
    ) -> torch.Tensor:
        """Validate the arguments; the output buffer (B, T + max_new_tokens) holding idx."""
        check_sampling(temperature, top_k, top_p, max_new_tokens)
        if idx.dim() != 2 or idx.size(1) == 0:
            raise ValueError(
                f"idx must be (batch, tokens) with tokens >= 1, got {tuple(idx.shape)}"
            )
        B, T = idx.shape
        seq = torch.empty(B, T + max_new_tokens, dtype=torch.long, device=idx.device)
        seq[:, :T] = idx
        return seq

    @torch.inference_mode()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue every row of idx (B, T) by up to max_new_tokens tokens -> (B, T + new).

        temperature 0 is greedy; top_k / top_p restrict sampling (see `sample_next`); several
        samples of one prompt are rows repeated by the caller. A row that produced eos_token is
        filled with eos_token from then on, and generation stops early once every row has
        (so `new` may be less than max_new_tokens).
        """
        seq = self._start(idx, max_new_tokens, temperature, top_k, top_p)
        T = idx.size(1)
        if max_new_tokens == 0:
            return seq
        steps = self._decode(seq, T, temperature, top_k, top_p, eos_token, generator)
        new = sum(1 for _ in steps)
        return seq[:, : T + new]

    @torch.inference_mode()
    def generate_stream(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[torch.Tensor]:
        """Like `generate`, but yield each new token column (B,) as soon as it is sampled."""
        seq = self._start(idx, max_new_tokens, temperature, top_k, top_p)
        if max_new_tokens > 0:
            yield from self._decode(
                seq, idx.size(1), temperature, top_k, top_p, eos_token, generator
            )

    # ----------------------------------------------------------------------------------------
    # Hugging Face interoperability (implemented in gpt/hf.py, imported on first use)

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path) -> GPT:
        """A GPT-2 checkpoint from a local Hugging Face directory or a hub name (gpt2, ...)."""
        from gpt.hf import from_pretrained

        return from_pretrained(name_or_dir)

    def save_pretrained(
        self, out_dir: str | Path, tokeniser: Tokeniser | str | None = None
    ) -> Path:
        """Write a directory that transformers.GPT2LMHeadModel.from_pretrained loads."""
        from gpt.hf import save_pretrained

        return save_pretrained(self, out_dir, tokeniser)
