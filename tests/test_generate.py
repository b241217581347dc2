"""KV-cache generation: equal to full recomputation and to transformers' greedy generate;
eos stopping, context cropping, top-k / top-p support, seeded reproducibility; the one forward
(cached and packed calls equal plain ones) and nothing kept on the model between calls."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt.capability import CpuCapability, cpu_capability, native_bfloat16
from gpt.config import GPTConfig
from gpt.hf import state_to_hf
from gpt.model import cpu_decode
from gpt.model.cpu_decode import (
    LAYOUTS,
    SplitLinear,
    decoding_weights,
    layout_for,
    packing_available,
    split,
)
from gpt.model.generate import generate, generate_stream, sample_next
from gpt.model.gpt2 import GPT

CONFIG = GPTConfig(block_size=32, vocab_size=100, n_layer=2, n_head=2, n_embd=32,
                   pad_vocab_multiple=64)  # fmt: skip


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    m = GPT(CONFIG).eval()
    with torch.no_grad():  # larger weights than GPT-2's init: peaked predictions that depend
        for p in m.parameters():  # on position (so that a wrong crop shows) and do not repeat
            p.mul_(10.0 if p.dim() == 2 else 1.0)
        m.transformer.wpe.weight.mul_(10.0)
    return m


def greedy_by_recomputation(model: GPT, idx: torch.Tensor, new: int) -> torch.Tensor:
    """Greedy decoding that recomputes the whole context every step, cropped as generate does:
    when the context outgrows block_size, keep its last 3/4 * block_size tokens."""
    S = model.config.block_size
    keep = S - S // 4
    seq, start = idx.clone(), max(0, idx.size(1) - S)
    with torch.no_grad():
        for _ in range(new):
            if seq.size(1) - start > S:
                start = seq.size(1) - keep
            logits, _ = model(seq[:, start:])
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq


@pytest.mark.parametrize(("prompt_len", "new"), [(1, 12), (5, 27), (10, 70), (45, 30)])
def test_greedy_with_cache_equals_full_recomputation(model: GPT, prompt_len: int, new: int) -> None:
    """Including contexts that outgrow block_size (32): prompt + new > 32, prompt > 32."""
    idx = torch.randint(
        0, CONFIG.vocab_size, (3, prompt_len), generator=torch.Generator().manual_seed(1)
    )
    out = generate(model, idx, new, temperature=0)
    assert out.shape == (3, prompt_len + new)
    assert torch.equal(out, greedy_by_recomputation(model, idx, new))


def test_greedy_equals_transformers_generate(model: GPT) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_config = GPT2Config(
        vocab_size=CONFIG.vocab_size,
        n_positions=CONFIG.block_size,
        n_embd=CONFIG.n_embd,
        n_layer=CONFIG.n_layer,
        n_head=CONFIG.n_head,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    hf = GPT2LMHeadModel(hf_config).eval()
    missing, unexpected = hf.load_state_dict(state_to_hf(model), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    idx = torch.randint(0, CONFIG.vocab_size, (2, 6), generator=torch.Generator().manual_seed(2))
    new = CONFIG.block_size - 6  # transformers cannot go past n_positions
    expected = hf.generate(
        idx,
        attention_mask=torch.ones_like(idx),
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
    )
    assert torch.equal(generate(model, idx, new, temperature=0), expected)


def first_index(row: list[int], token: int) -> int:
    return row.index(token) if token in row else len(row)


def test_each_sequence_stops_at_eos(model: GPT) -> None:
    idx = torch.randint(0, CONFIG.vocab_size, (3, 4), generator=torch.Generator().manual_seed(3))
    free = generate(model, idx, 20, generator=torch.Generator().manual_seed(0))
    rows = free[:, 4:].tolist()
    eos = next(t for t in rows[0] if len({first_index(r, t) for r in rows}) == 3)
    first = [first_index(r, eos) for r in rows]  # rows finish at three different steps
    end = min(20, max(first) + 1)  # generation stops once every row has finished
    assert any(rows[r][first[r] + 1 : end] != [eos] * (end - first[r] - 1) for r in range(3))
    out = generate(model, idx, 20, eos_token=eos, generator=torch.Generator().manual_seed(0))
    assert out.size(1) == 4 + end
    for r in range(3):
        stop = 4 + first[r]
        assert torch.equal(out[r, : stop + 1], free[r, : stop + 1])  # the same up to eos
        assert torch.all(out[r, stop:] == eos)  # then eos padding


def test_generation_stops_early_when_all_rows_finish(model: GPT) -> None:
    idx = torch.randint(0, CONFIG.vocab_size, (1, 4), generator=torch.Generator().manual_seed(4))
    free = generate(model, idx, 10, temperature=0)
    out = generate(model, idx, 10, temperature=0, eos_token=int(free[0, 4]))
    assert torch.equal(out, free[:, :5])


def test_top_k_1_and_tiny_top_p_are_greedy(model: GPT) -> None:
    idx = torch.randint(0, CONFIG.vocab_size, (4, 3), generator=torch.Generator().manual_seed(5))
    greedy = generate(model, idx, 40, temperature=0)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(generate(model, idx, 40, temperature=1.0, top_k=1, generator=g), greedy)
    assert torch.equal(generate(model, idx, 40, temperature=1.5, top_p=1e-6, generator=g), greedy)


def test_top_k_restricts_the_support() -> None:
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(6)).repeat(4000, 1)
    allowed = set(logits[0].topk(5).indices.tolist())
    picks = sample_next(logits, 1.0, top_k=5, generator=torch.Generator().manual_seed(0))
    assert set(picks.tolist()) == allowed


def test_top_p_restricts_and_renormalises() -> None:
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    logits = probs.log().repeat(20000, 1)
    g = torch.Generator().manual_seed(0)
    picks = sample_next(logits, 1.0, top_p=0.75, generator=g)  # 0.5 + 0.3 reach 0.75
    counts = torch.bincount(picks, minlength=4).float() / len(picks)
    assert counts[0] == 0 and counts[2] == 0
    assert counts[1].item() == pytest.approx(0.5 / 0.8, abs=0.02)
    picks = sample_next(logits, 1.0, top_p=0.85, generator=g)  # needs the third, 0.15
    assert set(picks.tolist()) == {1, 2, 3}
    picks = sample_next(logits, 1.0, top_k=2, top_p=0.5, generator=g)  # top_k first, then p
    assert set(picks.tolist()) == {1}


def test_seeded_sampling_is_reproducible(model: GPT) -> None:
    idx = torch.zeros(4, 2, dtype=torch.long)  # several samples of one prompt: repeated rows
    a = generate(model, idx, 30, top_k=20, generator=torch.Generator().manual_seed(7))
    b = generate(model, idx, 30, top_k=20, generator=torch.Generator().manual_seed(7))
    c = generate(model, idx, 30, top_k=20, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert len({tuple(row) for row in a.tolist()}) > 1  # the samples differ from each other


def test_stream_yields_the_generated_columns(model: GPT) -> None:
    idx = torch.randint(0, CONFIG.vocab_size, (2, 3), generator=torch.Generator().manual_seed(9))
    out = generate(model, idx, 40, temperature=0)
    columns = list(generate_stream(model, idx, 40, temperature=0))
    assert torch.equal(torch.stack(columns, dim=1), out[:, 3:])


def test_weight_changes_invalidate_the_decoding_layout() -> None:
    torch.manual_seed(10)
    model = GPT(CONFIG).eval()
    idx = torch.randint(0, CONFIG.vocab_size, (2, 4))
    generate(model, idx, 5, temperature=0)  # decoding copies, made and dropped
    with torch.no_grad():  # in-place updates, as an optimizer step does
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    assert torch.equal(
        generate(model, idx, 20, temperature=0), greedy_by_recomputation(model, idx, 20)
    )
    other = GPT(CONFIG).eval()
    model.load_state_dict(other.state_dict())
    assert torch.equal(
        generate(model, idx, 20, temperature=0), greedy_by_recomputation(other, idx, 20)
    )


def test_zero_new_tokens_returns_the_prompt(model: GPT) -> None:
    idx = torch.randint(0, CONFIG.vocab_size, (2, 4))
    assert torch.equal(generate(model, idx, 0), idx)


@pytest.mark.parametrize(
    "kwargs",
    [{"temperature": -1.0}, {"top_k": 0}, {"top_p": 0.0}, {"top_p": 1.5}, {"max_new_tokens": -1}],
)
def test_bad_sampling_settings_are_refused(model: GPT, kwargs: dict) -> None:
    args = {"max_new_tokens": 5, **kwargs}
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        generate(model, torch.zeros(1, 1, dtype=torch.long), **args)


def test_empty_prompt_is_refused(model: GPT) -> None:
    with pytest.raises(ValueError, match="tokens >= 1"):
        generate(model, torch.zeros(2, 0, dtype=torch.long), 5)


def run_benchmark(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    script = Path(__file__).resolve().parent.parent / "bench" / "generate.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)  # fmt: skip


@pytest.mark.parametrize(("args", "flag"), [(["--batches", "1,x"], "--batches"),
                                            (["--dtypes", "float16"], "--dtypes")])  # fmt: skip
def test_benchmark_bad_input_is_one_line_error(args: list[str], flag: str, tmp_path: Path) -> None:
    result = run_benchmark(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {flag}") and "Traceback" not in result.stderr


def test_benchmark_runs_both_dtypes_against_transformers(tmp_path: Path) -> None:
    """bench/generate.py on a small model, from another directory: a row per batch and dtype,
    float32's greedy tokens identical to transformers', and the recompute row; with --layouts,
    a row per batch and layout, the rule's marked once a batch, every layout's tokens the same."""
    result = run_benchmark("--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--vocab-size",
                           "512", "--new-tokens", "4", "--rounds", "1", "--recompute-tokens", "4",
                           "--batches", "1,8", "--layouts", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    cells = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| ")]
    rows = {row[0].strip(): row[1:] for row in cells[1:]}  # below the header
    cases = [f"generate, batch {b}, {d}" for d in ("float32", "bfloat16") for b in (1, 8)]
    layouts = [f"batch {b}, {name}" for b in (1, 8) for name in LAYOUTS]
    if not packing_available():
        layouts = [case for case in layouts if not case.endswith("packed")]
    rule = [case.removesuffix(" (the rule's)") for case in rows if case.endswith("(the rule's)")]
    assert rule == [
        f"batch 1, {layout_for(GPT(CONFIG), 1)}",
        f"batch 8, {layout_for(GPT(CONFIG), 8)}",
    ]
    rows = {case.removesuffix(" (the rule's)"): cells for case, cells in rows.items()}
    kv = "KV cache vs recompute, batch 1, 4 new"
    assert list(rows) == [*cases, kv, "float32, ours through", *layouts]
    assert all(rows[case][-1].strip() == "yes" for case in layouts)
    assert rows["generate, batch 8, float32"][-1].strip() == "yes"
    assert rows[kv][-1].strip() == "yes"
    [machine] = [line for line in result.stdout.splitlines() if line.startswith("machine: ")]
    assert f"({cpu_capability().isa}, " in machine  # the table names the CPU's ISA level


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes_decode_like_recomputation(model: GPT, dtype: torch.dtype) -> None:
    """Layouts oneDNN cannot pack (float64) fall back; bfloat16 takes the packed path (at
    batch 4 and 1 alike)."""
    other = GPT(CONFIG).to(dtype).eval()
    other.load_state_dict(model.state_dict())
    idx = torch.randint(0, CONFIG.vocab_size, (4, 5), generator=torch.Generator().manual_seed(11))
    expected = greedy_by_recomputation(other, idx, 10)
    assert torch.equal(generate(other, idx, 10, temperature=0), expected)
    assert torch.equal(generate(other, idx[:1], 10, temperature=0), expected[:1])


def module_state(model: GPT) -> dict[str, dict[str, object]]:
    """Every module's attributes and every parameter and buffer, by identity, with the tensors'
    version counters."""
    return {
        "attributes": {n: {k: id(v) for k, v in vars(m).items()} for n, m in model.named_modules()},
        "tensors": {n: (id(t), t._version) for n, t in model.state_dict(keep_vars=True).items()},
    }


@pytest.mark.parametrize("batch", [1, 4])  # the parameters as they are; packed copies (CPU)
def test_generation_keeps_nothing_on_the_model(batch: int) -> None:
    torch.manual_seed(12)
    model = GPT(CONFIG).eval()
    idx = torch.randint(0, CONFIG.vocab_size, (batch, 4))
    before = module_state(model)
    weights = {n: p.clone() for n, p in model.named_parameters()}
    generate(model, idx, 5, temperature=0)
    list(generate_stream(model, idx, 5, temperature=0))
    assert module_state(model) == before
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
    with torch.no_grad():  # in place through .data: no version bump, as fused AdamW's step
        for p in model.parameters():
            p.data.add_(torch.randn_like(p) * 0.5)
    assert module_state(model) == before  # nothing signals the change, and nothing needs to
    assert torch.equal(
        generate(model, idx, 20, temperature=0), greedy_by_recomputation(model, idx, 20)
    )


def available_layouts() -> list[str]:
    """CPU decoding's layouts this PyTorch build can run (packing needs oneDNN's ops)."""
    return [name for name in LAYOUTS if name != "packed" or packing_available()]


@pytest.mark.parametrize("layout", available_layouts())
@pytest.mark.parametrize("batch", [1, 2, 4])
def test_every_decoding_layout_computes_what_the_layers_compute(batch: int, layout: str) -> None:
    """Each of CPU decoding's float32 layouts (copies, split views) gives the layers' own
    outputs, float32 rounding apart, whichever CPU runs the test."""
    model = GPT(CONFIG).eval()
    weights = decoding_weights(model, batch, layout)
    copies = 4 * CONFIG.n_layer if layout in ("split", "packed") else 0
    assert len(weights.layers) == copies
    with torch.no_grad():
        for layer in (model.transformer.h[0].attn.c_attn, model.transformer.h[1].mlp.c_proj):
            x = torch.randn(batch, 1, layer.in_features)  # (B, T, in)
            torch.testing.assert_close(weights.linear(layer, x), layer(x))
        h = torch.randn(batch, CONFIG.n_embd)  # (B, C)
        torch.testing.assert_close(weights.logits(h), model.logits(h))


@pytest.mark.parametrize(
    ("isa", "batch", "layout"),
    [
        ("AVX2", 1, "split"),
        ("AVX2", 2, "packed"),
        ("AMX", 1, "input-major-head"),
        ("AMX", 3, "layers"),
        ("AVX-512", 4, "packed"),
        ("SVE256", 1, "input-major-head"),  # an unmeasured kind keeps the Xeon's rules
    ],
)
def test_the_rule_picks_what_was_measured_on_each_kind_of_cpu(
    model: GPT, isa: str, batch: int, layout: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The float32 layouts of cpu_decode's measured tables, for a CPU of each ISA level (the
    capability stands in for the machine's, so every path is checked on any CPU)."""
    if layout == "packed" and not packing_available():
        pytest.skip("this PyTorch build cannot pack weights")
    capability = CpuCapability("test CPU", isa, native_bfloat16=isa == "AMX")
    monkeypatch.setattr(cpu_decode, "cpu_capability", lambda: capability)
    assert layout_for(model, batch) == layout


@pytest.mark.parametrize("layout", available_layouts())
def test_every_decoding_layout_decodes_as_recomputation(model: GPT, layout: str) -> None:
    """Greedy tokens through each layout equal recomputation's, one sequence and three."""
    for batch in (1, 3):
        idx = torch.randint(
            0, CONFIG.vocab_size, (batch, 6), generator=torch.Generator().manual_seed(4)
        )
        out = generate(model, idx, 40, temperature=0, layout=layout)
        assert torch.equal(out, greedy_by_recomputation(model, idx, 40))


def test_an_unknown_layout_is_refused(model: GPT) -> None:
    with pytest.raises(ValueError, match="layout must be one of"):
        generate(model, torch.zeros(1, 1, dtype=torch.long), 2, layout="fast")


@pytest.mark.parametrize(
    ("rows", "parts", "keep", "bias", "shape"),
    [
        (96, 2, None, True, (1, 1)),  # one token, as decoding multiplies it
        (128, 3, 100, False, (1,)),  # a padded lm_head: 3 groups of 42 rows cover the 100 kept
        (100, 3, None, False, (2,)),  # 100 = 3 x 33 + 1: the last row on its own
        (96, 5, None, True, (2, 7)),  # 5 x 19 + 1, with a bias, several rows (a prefill)
        (4, 8, None, True, (1, 1)),  # more threads than rows: a group per row
    ],
)
def test_split_linear_is_linear_from_views(
    rows: int, parts: int, keep: int | None, bias: bool, shape: tuple[int, ...]
) -> None:
    """SplitLinear computes F.linear's rows (the kept ones) from views of the layer's own
    tensors. In float64 both sum the same 32 products per output, in other orders: each sum is
    within 32 * 2^-53 of the exact one relative to the sum of |products| (~6 here), so 1e-12
    absolute is ample."""
    torch.manual_seed(rows + parts)
    layer = torch.nn.Linear(32, rows, bias=bias, dtype=torch.float64)
    x = torch.randn(*shape, 32, dtype=torch.float64)
    product = SplitLinear(layer.weight, layer.bias, parts, keep)
    expected = layer(x)[..., : keep or rows]
    with torch.no_grad():
        torch.testing.assert_close(product(x), expected, rtol=0, atol=1e-12)
    storage = layer.weight.untyped_storage().data_ptr()
    assert product.weight.untyped_storage().data_ptr() == storage  # a view, not a copy


def test_split_weights_run_the_blocks_as_the_layers_do(model: GPT) -> None:
    """The blocks through `split` weights (3 groups: 96- and 128-row layers, the 128 padded
    rows of the lm_head, remainders included) give the plain forward's logits."""
    weights = split(model, 3)
    idx = torch.randint(0, CONFIG.vocab_size, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = weights.logits(model.hidden(idx, linear=weights.linear))
        expected = model.logits(model.hidden(idx))
    # float32 sums of up to 128 products in other orders; logits here are ~10-100 in size
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-3)


@pytest.mark.cpu_dependent
@pytest.mark.skipif(not packing_available(), reason="this PyTorch build cannot pack weights")
def test_bfloat16_is_packed_from_one_sequence_where_the_cpu_multiplies_it() -> None:
    """bfloat16 weights decode through packed copies at every batch size on a CPU that
    multiplies bfloat16 natively (cpu_decode's measurements), through the layers themselves on
    one that would emulate it (oneDNN cannot pack it there): the predicate the code asks. Either
    way they give the layers' outputs to bfloat16 rounding."""
    model = GPT(CONFIG).to(torch.bfloat16).eval()
    weights = decoding_weights(model, 1)
    native = native_bfloat16(torch.device("cpu"))
    assert len(weights.layers) == (4 * CONFIG.n_layer if native else 0)
    layer = model.transformer.h[0].mlp.c_fc
    x = torch.randn(1, 1, layer.in_features, dtype=torch.bfloat16)
    with torch.no_grad():
        # both round a float32 sum of the same products to bfloat16: at most one step apart
        # (2^-7 relative); atol for sums that cancel to near zero
        torch.testing.assert_close(weights.linear(layer, x), layer(x), rtol=2**-7, atol=1e-2)


def test_float64_is_not_packed() -> None:
    """oneDNN cannot pack float64: such a model decodes with its own layers."""
    assert decoding_weights(GPT(CONFIG).double(), 4).layers == {}
