"""The Qwen3-layout family (gpt/model/qwen3.py): shape and parameter count against transformers,
initialisation, rotary positions, grouped-query attention, and the config's family rules.

The cached and packed forwards of both families are tested in tests/test_model.py; agreement
with transformers' Qwen3ForCausalLM (logits, greedy generation) in tests/test_hf_qwen3.py.
"""

from __future__ import annotations

import pytest
import torch

from gpt.cli import UserError
from gpt.config import GPTConfig, model_preset
from gpt.model.families import build_model
from tests.test_generate import greedy_by_recomputation
from tests.test_model import float64_model

# float64 rounding is ~1e-16 per operation; 1e-10 leaves room for a few thousand of them and
# still fails on any real error (a wrong angle or head grouping moves outputs by >= 1e-3).
EXACT = {"rtol": 1e-10, "atol": 1e-10}
SMALL = GPTConfig(arch="qwen3", block_size=64, vocab_size=100, n_layer=2, n_head=4, n_embd=32)


def hf_qwen3_param_count(config: GPTConfig) -> int:
    """Parameters of transformers' Qwen3ForCausalLM of the same shape, built on the meta device."""
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.Qwen3Config(
        vocab_size=config.padded_vocab_size,
        hidden_size=config.n_embd,
        intermediate_size=config.mlp_size,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=config.kv_heads,
        head_dim=config.head_dim,
        tie_word_embeddings=config.tied,
    )
    with torch.device("meta"):
        model = transformers.Qwen3ForCausalLM(hf_config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("preset", ["modern", "modern-tiny", "modern-demo"])
def test_parameter_count_equals_transformers(preset: str) -> None:
    config = model_preset(preset)
    with torch.device("meta"):
        model = build_model(config)
    assert model.num_params() == hf_qwen3_param_count(config)


def test_decoupled_heads_count_and_flops() -> None:
    """Qwen3-0.6B's shape (1024 wide, 28 layers, 16 query heads of 128 over 8 key/value heads,
    tied): transformers' parameter count, and attention FLOPs over the 2048-wide heads."""
    config = GPTConfig(arch="qwen3", block_size=4096, vocab_size=151_936, n_layer=28, n_head=16,
                       n_embd=1024, n_kv_head=8, ffn_size=3072, tie_embeddings=True,
                       head_size=128)  # fmt: skip
    with torch.device("meta"):
        model = build_model(config)
    assert model.num_params() == hf_qwen3_param_count(config) == 596_049_920
    T = 4096
    assert model.flops_per_token(T) == 6 * model.num_params() + 12 * 28 * (16 * 128) * T


def test_modern_has_gpt2_small_blocks() -> None:
    """Same width, depth and block parameters as GPT-2 124M (SwiGLU at 8/3 x 768 = 2048 wide:
    3 x 768 x 2048 = 2 x 768 x 3072), so the same compute per token; the untied head adds
    50,257 x 768 parameters but no FLOPs."""
    with torch.device("meta"):
        modern, gpt2 = build_model(model_preset("modern")), build_model(model_preset("gpt2"))
    assert model_preset("modern").mlp_size == 2048
    modern_block = sum(p.numel() for p in modern.blocks[0].parameters())
    gpt2_block = sum(p.numel() for p in gpt2.blocks[0].parameters())
    # Besides the same 7,077,888 matrix weights: GPT-2's biases and LayerNorm gains and shifts
    # (2,304 + 768 + 3,072 + 768 + 4 x 768 = 9,984), Qwen3's RMSNorm gains (2 x 768 + 2 x 64).
    assert gpt2_block - modern_block == 9_984 - 1_664
    # The whole: the untied head in, GPT-2's position table out, RMSNorm's final gain (768)
    # instead of a LayerNorm's gain and shift (1,536).
    difference = 50_257 * 768 - 1024 * 768 + 12 * (1_664 - 9_984) + 768 - 1_536
    assert modern.num_params() - gpt2.num_params() == difference
    assert modern.flops_per_token() == pytest.approx(gpt2.flops_per_token(), rel=0.002)


def test_output_projections_and_head_start_at_zero() -> None:
    torch.manual_seed(0)
    model = build_model(model_preset("modern-tiny"))
    zero = [n for n, p in model.named_parameters() if not p.any()]
    layers = range(model.config.n_layer)
    expected = [
        f"model.layers.{i}.{m}.weight"
        for i in layers
        for m in ("self_attn.o_proj", "mlp.down_proj")
    ]
    assert sorted(zero) == sorted([*expected, "lm_head.weight"])
    logits, _ = model(torch.tensor([[1, 2, 3]]))
    assert not logits.any()  # a zero head: uniform predictions, loss ln(vocab) at step 0
    gains = [p for n, p in model.named_parameters() if n.endswith("norm.weight")]
    assert gains and all(torch.equal(g, torch.ones_like(g)) for g in gains)


def test_tied_variant_shares_the_embedding() -> None:
    model = build_model(GPTConfig(**{**SMALL.__dict__, "tie_embeddings": True}))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.lm_head.weight.any()  # initialised as the embedding, not zeroed
    assert "lm_head.weight" in model.tied_alias


def test_rotary_attention_depends_only_on_relative_positions() -> None:
    """Shifting every position by the same amount leaves the outputs unchanged (rotary
    embeddings encode only the distance between a query and a key), while a causal model
    with a real position signal changes when the relative order changes."""
    model = float64_model(SMALL)
    idx = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        base = model.hidden(idx)
        shifted = model.hidden(idx, positions=torch.arange(9) + 17)
        squeezed = model.hidden(idx, positions=torch.arange(9) * 2)
    # The angles are computed in float32, as transformers does: an angle of up to 26 rad is
    # off by up to 26 x 2^-24 ~ 1.6e-6 rad, so the two calls' rotations differ at that level
    # (observed ~2e-7 after the norms); 1e-5 allows it, while a relative-position error moves
    # outputs by 1e-3 or more (the squeezed positions below).
    torch.testing.assert_close(shifted, base, rtol=1e-5, atol=1e-5)
    assert (squeezed[:, 1:] - base[:, 1:]).abs().max() > 1e-3


def test_rotary_rotates_half_pairs_by_position_angles() -> None:
    """Qwen3's pairing: element i turns with element i + hs/2 by angle pos * theta^(-2i/hs)."""
    from gpt.model.qwen3 import rotary_angles, rotate

    x = torch.randn(1, 1, 1, 8, dtype=torch.float64)
    out = rotate(x, rotary_angles(torch.tensor([5]), 8, 10000.0))
    for i in range(4):
        angle = torch.tensor(5 * 10000.0 ** (-2 * i / 8), dtype=torch.float32).double()
        a, b = x[0, 0, 0, i], x[0, 0, 0, i + 4]
        # the angles are float32, as in transformers: compare at float32's resolution
        expected = (a * angle.cos() - b * angle.sin(), b * angle.cos() + a * angle.sin())
        torch.testing.assert_close(out[0, 0, 0, i], expected[0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(out[0, 0, 0, i + 4], expected[1], rtol=1e-6, atol=1e-6)


def test_grouped_query_attention_equals_repeated_key_value_heads() -> None:
    """n_kv_head = 2 with 4 query heads is full attention whose key/value heads are each
    repeated for two consecutive query heads."""
    grouped = float64_model(GPTConfig(**{**SMALL.__dict__, "n_kv_head": 2}))
    full = build_model(SMALL).double().eval()
    state = grouped.state_dict()
    hs = SMALL.head_dim
    for key in list(state):
        if key.endswith(("k_proj.weight", "v_proj.weight")):  # (2 hs, C) -> (4 hs, C)
            heads = state[key].view(2, hs, -1)
            state[key] = heads.repeat_interleave(2, dim=0).reshape(4 * hs, -1)
    full.load_state_dict(state)
    idx = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(grouped(idx)[0], full(idx)[0], **EXACT)


def test_bf16_autocast_step_keeps_float32_weights() -> None:
    """The training step under CPU bf16 autocast (the GPU recipe's precision): a finite loss
    and float32 gradients for every parameter."""
    torch.manual_seed(0)
    model = build_model(model_preset("modern-tiny"))
    idx = torch.randint(0, 512, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(idx, idx)
    assert loss is not None and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"n_kv_head": 3}, "only for arch qwen3"),
        ({"tie_embeddings": False}, "only for arch qwen3"),
        ({"ffn_size": 100}, "only for arch qwen3"),
        ({"arch": "llama"}, "arch must be one of"),
        (
            {"arch": "qwen3", "n_head": 4, "n_kv_head": 3, "n_embd": 32},
            "multiple of GPTConfig.n_kv_head 3",
        ),
        ({"n_head": 4, "n_embd": 32, "head_size": 16}, "only for arch qwen3"),
        ({"arch": "qwen3", "n_head": 4, "n_embd": 32, "head_size": 7}, "must be even"),
        ({"arch": "qwen3", "n_head": 32, "n_embd": 96}, "n_embd 96 / GPTConfig.n_head 32 = 3"),
    ],
)
def test_config_refuses_fields_outside_the_family(fields: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        GPTConfig(**fields)


@pytest.mark.parametrize("batch", [1, 4])  # the layers as they are (float32); packed copies
def test_greedy_with_cache_equals_recomputation(batch: int) -> None:
    """Rotary positions continue across the cache, grouped heads are cached per key/value
    head, and CPU decoding's packed copies (batch 4) cover the family's seven projections."""
    from gpt.model.cpu_decode import decoding_weights, packing_available
    from gpt.model.generate import generate

    config = GPTConfig(**{**SMALL.__dict__, "n_kv_head": 2, "pad_vocab_multiple": 64})
    model = float64_model(config).float()
    if batch == 4 and packing_available():
        assert len(decoding_weights(model, batch).layers) == 7 * config.n_layer
    idx = torch.randint(0, 100, (batch, 5), generator=torch.Generator().manual_seed(5))
    out = generate(model, idx, 20, temperature=0)
    assert torch.equal(out, greedy_by_recomputation(model, idx, 20))
