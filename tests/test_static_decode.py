"""The compiled decode step of fixed shapes (gpt/model/static_decode.py), on CPU: one graph per
batch size (no graph break), never recompiled across 300 positions, prompt lengths and cropping;
the eager loop's greedy tokens in float32 for both families, eos included; seeded sampling
reproducible, and its noise-driven picks distributed as sample_next's.

    pytest tests/test_static_decode.py

torch.compile is slow on CPU: one inductor compile per family (the module-scoped `compiled`
fixture, shared by the tests that take it); the sampling test traces with "aot_eager".
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch._dynamo.utils import counters

from gpt.config import model_preset
from gpt.model import static_decode
from gpt.model.base import LanguageModel
from gpt.model.decoding import noise_width, sample_next, sample_with_noise, sampling_distribution
from gpt.model.families import build_model
from gpt.model.generate import generate, generate_stream

BLOCK = 320
"""Room for 300 positions without cropping."""


def peaked(preset: str, seed: int = 0) -> LanguageModel:
    """A tiny model whose matrices are all N(0, 0.2), ten times the init's and none zero (the
    modern family starts its output projections and head at zero): peaked predictions that
    depend on position, so that eager and compiled float32 (which round differently) meet no
    near-tie."""
    torch.manual_seed(seed)
    model = build_model(model_preset(preset, block_size=BLOCK)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    return model


def prompts(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 512, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=["tiny", "modern-tiny"])
def compiled(request: pytest.FixtureRequest) -> LanguageModel:
    """A model of each family whose greedy step for batch 2 is compiled (inductor), checked to
    have produced exactly one graph and no graph break."""
    model = peaked(request.param)
    graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    generate(model, prompts(2, 4), 2, temperature=0, static=True)
    assert counters["stats"]["unique_graphs"] == graphs + 1
    assert sum(counters["graph_break"].values()) == breaks
    return model


def test_300_positions_never_recompile_and_give_the_eager_tokens(compiled: LanguageModel) -> None:
    idx = prompts(2, 3)
    graphs = counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(error_on_recompile=True):
        out = generate(compiled, idx, 300, temperature=0, static=True)
    assert counters["stats"]["unique_graphs"] == graphs
    assert out.shape == (2, 303)
    assert torch.equal(out, generate(compiled, idx, 300, temperature=0))


@pytest.mark.parametrize(("prompt_len", "new"), [(1, 20), (17, 30), (BLOCK + 10, 12)])
def test_prompt_lengths_and_cropping_reuse_the_graph(
    compiled: LanguageModel, prompt_len: int, new: int
) -> None:
    """A one-token prompt (no prefill), a longer one, and one longer than block_size (cropped,
    then the cache refilled after the first new token) -- each after the cache held a longer
    context, whose stale positions the mask must hide."""
    generate(compiled, prompts(2, 40, seed=9), 5, temperature=0, static=True)
    idx = prompts(2, prompt_len)
    with torch._dynamo.config.patch(error_on_recompile=True):
        out = generate(compiled, idx, new, temperature=0, static=True)
    assert torch.equal(out, generate(compiled, idx, new, temperature=0))


def test_eos_stops_where_the_eager_loop_stops(compiled: LanguageModel) -> None:
    """Rows finish at different steps; generate checks every STOP_CHECK_EVERY tokens and trims
    to the eager loop's length, generate_stream checks every token."""
    idx = prompts(2, 6, seed=3)
    free = generate(compiled, idx, 60, temperature=0)[:, 6:].tolist()
    first = [{t: row.index(t) for t in reversed(row)} for row in free]  # token -> its 1st step
    both = [t for t in first[0] if t in first[1] and first[0][t] != first[1][t]]
    eos = min(both, key=lambda t: max(first[0][t], first[1][t]))  # rows end at different steps
    expected = generate(compiled, idx, 60, temperature=0, eos_token=eos)
    assert expected.size(1) == 6 + max(first[0][eos], first[1][eos]) + 1 < 66
    static = generate(compiled, idx, 60, temperature=0, eos_token=eos, static=True)
    assert torch.equal(static, expected)
    columns = list(generate_stream(compiled, idx, 60, temperature=0, eos_token=eos, static=True))
    assert torch.equal(torch.stack(columns, dim=1), expected[:, 6:])


def test_the_model_keeps_nothing_and_its_decoders_go_with_it() -> None:
    """Decoders are held per model in a weak dictionary: nothing on the model (same state, same
    attributes), and nothing kept once the model is gone. Traced with the eager backend: what
    is checked is the bookkeeping."""
    model = peaked("tiny", seed=5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    attributes = set(vars(model))
    backend = static_decode.BACKEND
    static_decode.BACKEND = "eager"
    try:
        generate(model, prompts(1, 4), 3, temperature=0, static=True)
    finally:
        static_decode.BACKEND = backend
    assert set(vars(model)) == attributes
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert model in static_decode.DECODERS
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None


def test_seeded_sampling_is_reproducible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(static_decode, "BACKEND", "aot_eager")
    model = peaked("modern-tiny", seed=2)
    with torch.no_grad():  # flatter predictions, so that the draws matter
        model.lm_head.weight.mul_(0.05)
    idx = prompts(2, 5)

    def sample(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return generate(model, idx, 40, top_k=50, top_p=0.9, generator=g, static=True)

    first = sample(0)
    assert torch.equal(sample(0), first)
    assert not torch.equal(sample(1), first)


@pytest.mark.parametrize(("top_k", "top_p"), [(None, None), (3, None), (None, 0.8), (4, 0.7)])
def test_noise_picks_follow_the_distribution(top_k: int | None, top_p: float | None) -> None:
    """20,000 picks of one row's logits against the probabilities sample_next draws from (the
    filtered distribution, renormalised): within 0.015 each (4 standard deviations)."""
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.0, -1.0, -3.0]]).expand(20_000, -1)
    generator = torch.Generator().manual_seed(0)
    noise = torch.empty(20_000, noise_width(6, top_k)).exponential_(generator=generator)
    picks = sample_with_noise(logits, noise, 0.9, top_k, top_p)
    probs, ids = sampling_distribution(logits[:1], 0.9, top_k, top_p)
    tokens = ids[0] if ids is not None else torch.arange(6)
    expected = torch.zeros(6).index_add_(0, tokens, probs[0])
    expected /= expected.sum()
    seen = torch.bincount(picks, minlength=6) / 20_000
    torch.testing.assert_close(seen, expected, atol=0.015, rtol=0)
    assert torch.all(seen[expected == 0] == 0)  # filtered tokens never picked
    support = sample_next(logits[:2000], 0.9, top_k, top_p, torch.Generator().manual_seed(0))
    assert set(support.tolist()) <= set(torch.nonzero(expected).flatten().tolist())


def test_a_zero_noise_never_picks_a_filtered_token() -> None:
    """probs / noise with a noise of 0 is inf, or nan for a filtered token (0 / 0): a filtered
    token must lose even then."""
    logits = torch.tensor([[3.0, 0.0, -2.0]])
    noise = torch.tensor([[1.0, 0.0]])  # top_k=2 columns: token 0, then token 1 (drawn 0)
    assert sample_with_noise(logits, noise, 1.0, top_k=2).tolist() == [1]  # inf wins
    noise = torch.tensor([[1.0, 0.0, 0.0]])
    assert sample_with_noise(logits, noise, 1.0, top_p=0.5).tolist() == [0]  # 1, 2 filtered
