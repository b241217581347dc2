"""The GPT-2 module: parameter counts against transformers, initialisation, padded vocabulary,
FLOPs per token (hand-worked and counted), and the one forward: cached and packed calls give the
plain forward's logits."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from gpt.config import GPTConfig, model_preset
from gpt.model.base import LanguageModel
from gpt.model.families import build_model
from gpt.model.generate import KVCache, generate
from gpt.model.gpt2 import GPT


def hf_param_count(config: GPTConfig) -> int:
    """Parameters of transformers' GPT2LMHeadModel of the same shape (built on the meta device;
    tied embeddings counted once, as parameters() does)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_config = GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
    )
    with torch.device("meta"):
        model = GPT2LMHeadModel(hf_config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("preset", ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"])
def test_parameter_count_equals_transformers(preset: str) -> None:
    config = model_preset(preset)
    with torch.device("meta"):
        model = GPT(config)
    assert model.num_params() == hf_param_count(config)


def test_gpt2_has_124m_parameters() -> None:
    with torch.device("meta"):
        model = GPT(model_preset("gpt2"))
    assert model.num_params() == 124_439_808  # OpenAI's figure, tied embeddings counted once
    # The position table (1024 x 768) and the token table (50257 x 768) are the embeddings.
    assert model.num_params(non_embedding=True) == 124_439_808 - 1024 * 768 - 50257 * 768


def test_initialisation_statistics() -> None:
    torch.manual_seed(0)
    config = GPTConfig(block_size=128, vocab_size=2048, n_layer=4, n_head=4, n_embd=256)
    model = GPT(config)
    residual_std = 0.02 / math.sqrt(2 * config.n_layer)
    for name, p in model.named_parameters():
        if name.endswith("bias") and ".ln_" not in name and "ln_f" not in name:
            assert torch.count_nonzero(p) == 0, name
        elif "ln_" in name:
            expected = 1.0 if name.endswith("weight") else 0.0
            assert torch.all(p == expected), name
        else:
            expected = residual_std if name.endswith("c_proj.weight") else 0.02
            assert p.mean().abs() < 3 * expected / math.sqrt(p.numel()) + 1e-6, name
            assert p.std().item() == pytest.approx(expected, rel=0.05), name
    assert model.lm_head.weight is model.transformer.wte.weight


def test_each_parameter_is_initialised_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """GPT-2's init touches every parameter exactly once (the tied lm_head through wte)."""
    calls: Counter[int] = Counter()
    in_gpt_init = [False]  # count only GPT._init_weights' calls, not torch's default inits
    for fn in ("normal_", "zeros_", "ones_"):
        original = getattr(nn.init, fn)

        def counting(tensor: torch.Tensor, *args: object, _f=original, **kw: object) -> object:
            calls[id(tensor)] += in_gpt_init[0]
            return _f(tensor, *args, **kw)

        monkeypatch.setattr(nn.init, fn, counting)
    original_init = GPT._init_weights

    def tracked(self: GPT, module: nn.Module) -> None:
        in_gpt_init[0] = True
        original_init(self, module)
        in_gpt_init[0] = False

    monkeypatch.setattr(GPT, "_init_weights", tracked)
    model = GPT(model_preset("tiny"))
    params = list(model.parameters())  # the tied weight appears once
    assert len(params) == 4 + 12 * model.config.n_layer
    assert [calls[id(p)] for p in params] == [1] * len(params)


def test_padded_vocabulary_is_never_predicted() -> None:
    torch.manual_seed(0)
    config = GPTConfig(block_size=32, vocab_size=500, n_layer=2, n_head=2, n_embd=32,
                       pad_vocab_multiple=64)  # fmt: skip
    model = GPT(config).eval()
    assert config.padded_vocab_size == 512
    assert model.transformer.wte.weight.shape == (512, 32)
    with torch.no_grad():  # padded rows that would win every argmax and all sampling mass
        model.transformer.ln_f.bias.fill_(1.0)
        model.transformer.wte.weight[500:] = 100.0
    idx = torch.randint(0, 500, (3, 7))
    targets = torch.randint(0, 500, (3, 7))
    logits, _ = model(idx)
    _, loss = model(idx, targets)
    assert logits.shape == (3, 7, 500)
    reference = nn.functional.cross_entropy(logits.reshape(-1, 500), targets.reshape(-1))
    torch.testing.assert_close(loss, reference)
    greedy = generate(model, idx, 20, temperature=0)
    sampled = generate(model, idx, 20, temperature=2.0, generator=torch.Generator().manual_seed(0))
    assert greedy.max() < 500 and sampled.max() < 500


def test_padded_vocab_preset_has_50304_rows() -> None:
    with torch.device("meta"):
        model = GPT(model_preset("gpt2", pad_vocab_multiple=64))
    assert model.transformer.wte.weight.shape == (50304, 768)
    assert model.lm_head.weight.shape == (50304, 768)


def test_forward_refuses_sequences_longer_than_block_size(tiny_config: GPTConfig) -> None:
    model = GPT(tiny_config)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, tiny_config.block_size + 1, dtype=torch.long))


def test_flops_per_token_gpt2_hand_worked() -> None:
    with torch.device("meta"):
        model = GPT(model_preset("gpt2"))
    # N without the position table: 124,439,808 - 786,432 = 123,653,376; 6N = 741,920,256.
    # Attention: 12 * 12 layers * 768 * 1024 = 113,246,208.
    assert model.flops_per_token(1024) == 855_166_464
    assert model.flops_per_token() == model.flops_per_token(1024)
    assert model.flops_per_token(0) == 741_920_256


def addmm_flops(self_shape: list[int], a_shape: list[int], b_shape: list[int], **_: object) -> int:
    """FLOPs of addmm(self, a, b) given the shapes, in FlopCounterMode's custom_mapping form."""
    return flop_counter.mm_flop(a_shape, b_shape)


def test_flops_per_token_matches_counted_matmuls() -> None:
    """6N is forward + backward of every matmul; the counter sees the matmuls only (not the
    attention kernel on CPU, nor biases and LayerNorms, which are ~1% of N here). The chunked
    loss accumulates the lm_head's weight gradient with the in-place addmm_, which the counter
    does not know: it is taught addmm's formula."""
    config = GPTConfig(block_size=64, vocab_size=1024, n_layer=2, n_head=4, n_embd=128)
    model = GPT(config)
    idx = torch.randint(0, 1024, (2, 64))
    in_place = {torch.ops.aten.addmm_: addmm_flops}
    with FlopCounterMode(display=False, custom_mapping=in_place) as counter:
        _, loss = model(idx, idx)
        loss.backward()
    counted = counter.get_total_flops() / idx.numel()
    expected = model.flops_per_token(0)  # without the attention term
    assert counted == pytest.approx(expected, rel=0.02)


def test_benchmark_bad_input_is_one_line_error() -> None:
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, str(root / "bench" / "model.py"), "--steps", "0"],
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


# The cached and packed calls run the same arithmetic through other kernels (attention over a
# cache slice or under a mask, one query at a time, matmuls of other shapes), so in float32 they
# differ from the plain forward by rounding (~1e-6). In float64 rounding is ~1e-15, and 1e-10
# still catches any real error (a wrong position or mask changes logits by 1e-3 or more).
EXACT = {"rtol": 1e-10, "atol": 1e-10}
SMALL = GPTConfig(block_size=32, vocab_size=100, n_layer=2, n_head=2, n_embd=32)
# The Qwen3 family with grouped-query attention (2 query heads per key/value head).
SMALL_QWEN3 = GPTConfig(
    arch="qwen3", block_size=32, vocab_size=100, n_layer=2, n_head=4, n_kv_head=2, n_embd=32
)
FAMILIES = pytest.mark.parametrize("config", [SMALL, SMALL_QWEN3], ids=["gpt2", "qwen3"])


def float64_model(config: GPTConfig = SMALL) -> LanguageModel:
    """A float64 model of config's family with every weight random (Qwen3's zero-initialised
    projections and head would make its tests trivial)."""
    torch.manual_seed(0)
    model = build_model(config).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3 if p.dim() > 1 else 1.0)
    return model


@FAMILIES
def test_cached_prefill_and_decode_equal_the_full_forward(config: GPTConfig) -> None:
    """A prefill, single tokens, and a chunk of several tokens on a filled cache (its queries
    attend causally to the cache and to each other; Qwen3's rotary positions continue)."""
    model = float64_model(config)
    idx = torch.randint(0, config.vocab_size, (3, 20), generator=torch.Generator().manual_seed(1))
    cuts = [0, 7, 8, 13, 14, 15, 20]
    cache = KVCache(config, 3, 20, torch.device("cpu"), torch.float64)
    with torch.no_grad():
        full, _ = model(idx)  # (3, 20, V)
        pieces = [model(idx[:, a:b], cache=cache)[0] for a, b in pairwise(cuts)]
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, **EXACT)


def packed_mask(segment: list[int], part: list[int]) -> torch.Tensor:
    """(T, T) bool: causal, within a segment, each part seeing part 0 (a shared context) and
    itself, as HellaSwag's packing does."""
    seg, prt = torch.tensor(segment), torch.tensor(part)
    causal = torch.ones(len(segment), len(segment), dtype=torch.bool).tril()
    visible = (prt[None, :] == 0) | (prt[:, None] == prt[None, :])
    return causal & (seg[:, None] == seg[None, :]) & visible


@FAMILIES
def test_packed_forward_equals_each_sequence_alone(config: GPTConfig) -> None:
    """Row 0 packs two sequences (positions restart at the second); row 1 a context and two
    endings (each ending sees the context and itself, positions continue after the context)."""
    model = float64_model(config)
    tok = torch.randint(0, config.vocab_size, (22,), generator=torch.Generator().manual_seed(2))
    a, b = tok[:6], tok[6:11]
    ctx, e0, e1 = tok[11:15], tok[15:18], tok[18:22]
    idx = torch.stack([torch.cat([a, b]), torch.cat([ctx, e0, e1])])  # (2, 11)
    positions = torch.tensor([[*range(6), *range(5)], [*range(4), *range(4, 7), *range(4, 8)]])
    mask = torch.stack(
        [
            packed_mask([0] * 6 + [1] * 5, [0] * 11),
            packed_mask([0] * 11, [0] * 4 + [1] * 3 + [2] * 4),
        ]
    )
    with torch.no_grad():
        packed, _ = model(idx, positions=positions, mask=mask)  # (2, 11, V)

        def alone(*parts: torch.Tensor) -> torch.Tensor:
            return model(torch.cat(parts)[None])[0][0]  # (T, V)

        torch.testing.assert_close(packed[0, :6], alone(a), **EXACT)
        torch.testing.assert_close(packed[0, 6:], alone(b), **EXACT)
        torch.testing.assert_close(packed[1, :7], alone(ctx, e0), **EXACT)
        torch.testing.assert_close(packed[1, 7:], alone(ctx, e1)[4:], **EXACT)
