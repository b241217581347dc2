"""The chunked language-model loss (gpt/model/loss.py `lm_loss`) against F.cross_entropy on full
logits, in float64: loss and gradients, chunks that do not divide the positions, padded
vocabularies, and the model's forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import gpt.model.loss
from gpt.config import GPTConfig
from gpt.model.gpt2 import GPT
from gpt.model.loss import lm_loss

# Both sides compute in float64 and differ only in the order of their sums (over <= 1e4 terms of
# size <= 10 here): rounding of ~1e4 * 2**-53 * 10 ~ 1e-11 at most, so 1e-9 is a safe bound
# that still catches any real error (a wrong row, a missing chunk: differences of 1e-3 or more).
EXACT = {"rtol": 1e-9, "atol": 1e-9}


def plain_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab: int):
    """The computation lm_loss replaces: full padded logits, the real columns sliced off."""
    logits = (hidden @ weight.T)[..., :vocab]  # (B, T, V)
    return F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))


@pytest.mark.parametrize(
    ("B", "T", "chunk_rows"),
    [(2, 7, 4), (3, 5, 1), (1, 16, 16), (2, 9, 100), (4, 33, 10)],
)
@pytest.mark.parametrize(("vocab", "padded"), [(50, 50), (50, 64), (97, 128)])
def test_loss_and_gradients_equal_cross_entropy_on_full_logits(
    B: int, T: int, chunk_rows: int, vocab: int, padded: int
) -> None:
    generator = torch.Generator().manual_seed(B * 1000 + T * 10 + chunk_rows)
    C = 24
    hidden = torch.randn(B, T, C, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(padded, C, dtype=torch.float64, generator=generator, requires_grad=True)
    targets = torch.randint(0, vocab, (B, T), generator=generator)

    expected = plain_loss(hidden, weight, targets, vocab)
    expected_grads = torch.autograd.grad(expected, (hidden, weight))
    loss = lm_loss(hidden, weight[:vocab], targets, chunk_rows=chunk_rows)
    grads = torch.autograd.grad(loss, (hidden, weight))

    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, expected, **EXACT)
    torch.testing.assert_close(grads[0], expected_grads[0], **EXACT)
    torch.testing.assert_close(grads[1], expected_grads[1], **EXACT)
    assert not grads[1][vocab:].any()  # padded rows are never predicted: no gradient


def test_loss_without_gradients_equals_the_one_with() -> None:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 11, 16, dtype=torch.float64, generator=generator)
    weight = torch.randn(40, 16, dtype=torch.float64, generator=generator)
    targets = torch.randint(0, 40, (3, 11), generator=generator)
    with torch.no_grad():
        evaluated = lm_loss(hidden, weight, targets, chunk_rows=4)
    trained = lm_loss(hidden, weight.requires_grad_(), targets, chunk_rows=4)
    torch.testing.assert_close(evaluated, trained.detach(), **EXACT)
    torch.testing.assert_close(evaluated, plain_loss(hidden, weight, targets, 40), **EXACT)


def test_model_loss_and_parameter_gradients_equal_the_plain_computation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The whole model in float64, padded vocabulary (500 -> 512), chunks of 3 positions over
    2 x 7 = 14 positions: every parameter's gradient as with full logits."""
    monkeypatch.setattr(gpt.model.loss, "LOSS_CHUNK_LOGITS", 3 * 500)
    config = GPTConfig(block_size=16, vocab_size=500, n_layer=2, n_head=2, n_embd=32,
                       pad_vocab_multiple=64)  # fmt: skip
    torch.manual_seed(0)
    model = GPT(config).double()
    idx = torch.randint(0, 500, (2, 7))
    targets = torch.randint(0, 500, (2, 7))

    logits, no_loss = model(idx)
    assert no_loss is None and logits.shape == (2, 7, 500)
    expected = F.cross_entropy(logits.reshape(-1, 500), targets.reshape(-1))
    expected.backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    no_logits, loss = model(idx, targets)
    loss.backward()
    assert no_logits is None
    torch.testing.assert_close(loss, expected, **EXACT)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected_grads[name], **EXACT, msg=name)


def test_loss_under_bf16_autocast_is_float32_and_close() -> None:
    """Under autocast the matmuls run in bfloat16 and the reduction in float32, as with
    F.linear + F.cross_entropy; the loss is not rounded to bfloat16."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 9, 32, generator=generator)
    weight = torch.randn(64, 32, generator=generator) * 0.2
    targets = torch.randint(0, 64, (2, 9), generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = lm_loss(hidden, weight, targets, chunk_rows=4)
        expected = F.cross_entropy(F.linear(hidden, weight).reshape(-1, 64), targets.reshape(-1))
    assert loss.dtype == torch.float32
    # Same bf16 logits on both sides (row-wise matmuls of the same inputs), reduced in float32 in
    # another order: float32 rounding, ~1e-6 of a loss of ~4.
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
