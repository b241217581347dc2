"""Decoding as one captured graph: a decode step whose shapes never change, compiled once per
batch size (and sampling setting) and, on CUDA, replayed as a CUDA graph.

    generate(model, idx, 256, temperature=0, static=True)    # gpt/model/generate.py, opt-in
    python bench/gpu.py     # rows "generate static, batch 1 / 8" against transformers' best

Eager decoding (gpt/model/generate.py) launches some fifteen kernels per layer and token from
Python, their shapes changing every token (one more key); on a GPU the launches, not the
arithmetic, set its speed (GPT-2 124M: 6.4 ms a token on an H200, BENCHMARKS.md). Here every
shape is fixed:
- the cache holds block_size positions (gpt/model/decoding.py's KVCache) and is attended whole,
  a mask hiding the positions a row has not filled (gpt.model.base.write_cache, tensor start);
- the token fed, its position (the row's length) and whether the row has finished are (B,)
  device tensors that the step advances in place; the next token is picked on the device
  (`sample_with_noise`: its Exp(1) noise is drawn into a fixed buffer from the caller's generator
  before each step, so the step holds no random state), eos handled there too;
so `torch.compile(fullgraph=True, dynamic=False)` traces the step once, and mode
"reduce-overhead" records it as a CUDA graph: one launch per token. The host waits for the
device only to check whether every row has finished, every STOP_CHECK_EVERY tokens (at every
token when streaming, whose reader waits for each token anyway).

The prompt, all but its last token, runs once through the eager forward into the same buffers
(prefill); the step then feeds its last token. A context longer than block_size is cropped and
refilled as the eager loop does, so greedy tokens are the eager loop's (float32: compared in
tests/test_static_decode.py, which also checks that 300 positions never recompile).

Kept between calls, so that a second call replays at once: per model (weakly referenced;
nothing is stored on the model) and batch size, the buffers and the compiled steps
(`decoder_for`). The cache costs n_layer x 2 x block_size x kv_heads x head_dim values per
sequence (GPT-2 124M in bfloat16: 38 MB). The model code knows nothing of this: the step calls
the one forward (`LanguageModel.hidden`) with positions, a mask and a cache whose length is a
tensor. On CPU the eager loop with its weight layouts (gpt/model/cpu_decode.py) is faster; the
compiled step runs there without graphs (how the tests exercise it).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from gpt.config import GPTConfig
from gpt.model.base import LanguageModel, varying_shapes
from gpt.model.decoding import KVCache, greedy, noise_width, sample_with_noise

STOP_CHECK_EVERY = 16
"""Tokens between two checks (host synchronisations) of whether every row has finished."""

BACKEND = "inductor"
"""torch.compile's backend for the steps compiled from now on. The tests and `bench/gpu.py
--smoke` trace with "aot_eager" / "eager" where inductor's code generation (tens of seconds on
CPU) is not what they check."""


@dataclass(frozen=True)
class Sampling:
    """How the step picks tokens (see gpt.model.decoding.sampling_distribution); part of what a
    compiled step is specialised to."""

    temperature: float
    top_k: int | None
    top_p: float | None


@dataclass
class RowCache:
    """The cache buffers k, v (L, B, n_kv, S, hs) seen by one step: each row's length (B,) a
    tensor (gpt.model.base.Cache)."""

    k: torch.Tensor
    v: torch.Tensor
    length: torch.Tensor

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (B, n_kv, S, hs) key and value buffers of layer i."""
        return self.k[i], self.v[i]


def decode_step(
    model: LanguageModel,
    k: torch.Tensor,
    v: torch.Tensor,
    token: torch.Tensor,
    pos: torch.Tensor,
    finished: torch.Tensor,
    eos: torch.Tensor,
    noise: torch.Tensor | None,
    sampling: Sampling,
) -> None:
    """Feed token (B,) at positions pos (B,) of the cache k, v; in place: token <- the next
    token (eos for a finished row), pos <- pos + 1, finished |= next == eos (eos a () tensor,
    -1 for none). noise: Exp(1) draws (B, noise_width), None for greedy."""
    capacity = k.size(3)
    mask = torch.arange(capacity, device=pos.device) <= pos[:, None]  # (B, S): filled so far
    cache = RowCache(k, v, pos)
    hidden = model.hidden(token[:, None], positions=pos[:, None], mask=mask[:, None], cache=cache)
    logits = model.logits(hidden[:, 0])  # (B, V)
    if noise is None:
        picked = greedy(logits)
    else:
        temperature, top_k, top_p = sampling.temperature, sampling.top_k, sampling.top_p
        picked = sample_with_noise(logits, noise, temperature, top_k, top_p)
    picked = torch.where(finished, eos, picked)
    finished.logical_or_(picked == eos)
    token.copy_(picked)
    pos.add_(1)


def compile_step(sampling: Sampling, device: torch.device) -> Callable[..., None]:
    """decode_step for one sampling setting, compiled: one graph (a graph break is an error),
    shapes fixed, replayed as a CUDA graph on CUDA."""
    step = functools.partial(decode_step, sampling=sampling)
    if BACKEND != "inductor":
        return torch.compile(step, fullgraph=True, dynamic=False, backend=BACKEND)
    mode = "reduce-overhead" if device.type == "cuda" else "default"
    return torch.compile(step, fullgraph=True, dynamic=False, mode=mode)


class StaticDecoder:
    """The fixed buffers for decoding batch_size rows of one model, and its compiled steps (one
    per sampling setting, compiled at first use)."""

    def __init__(
        self, config: GPTConfig, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.device = device
        self.vocab_size = config.vocab_size
        self.cache = KVCache(config, batch_size, config.block_size, device, dtype)
        # zeros, not garbage: masked positions are still read, and 0 x NaN would leak through
        self.cache.k.zero_()
        self.cache.v.zero_()
        self.token = torch.zeros(batch_size, dtype=torch.long, device=device)
        """The token the next step feeds, then the one it picked."""
        self.pos = torch.zeros(batch_size, dtype=torch.long, device=device)
        """The position of `token`: the row's length in the cache."""
        self.finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
        self.eos = torch.tensor(-1, dtype=torch.long, device=device)
        self.noise: dict[int, torch.Tensor] = {}
        self.steps: dict[Sampling, Callable[..., None]] = {}
        for t in (self.cache.k, self.cache.v, self.token, self.pos, self.finished, self.eos):
            static_address(t)

    def start(self, eos_token: int | None) -> None:
        """Make every row unfinished, for a new call stopping at eos_token (or never)."""
        self.finished.zero_()
        self.eos.fill_(-1 if eos_token is None else eos_token)

    def prefill(self, model: LanguageModel, context: torch.Tensor) -> int:
        """Run all but the last token of context (B, c) into the cache from position 0 and make
        the last the one the next step feeds; its position c - 1."""
        self.cache.length = 0
        if context.size(1) > 1:
            with varying_shapes():  # the eager forward, its shapes the prompt's
                model.hidden(context[:, :-1], cache=self.cache)
        self.token.copy_(context[:, -1])
        self.pos.fill_(context.size(1) - 1)
        return context.size(1) - 1

    def step(
        self, model: LanguageModel, sampling: Sampling, generator: torch.Generator | None
    ) -> None:
        """Feed `token`, pick the next one into it (see decode_step)."""
        if sampling not in self.steps:
            self.steps[sampling] = compile_step(sampling, self.device)
        noise = self.noise_for(sampling)
        if noise is not None:
            noise.exponential_(generator=generator)
        torch.compiler.cudagraph_mark_step_begin()  # a new replay: nothing of the last is kept
        cache = self.cache
        self.steps[sampling](
            model, cache.k, cache.v, self.token, self.pos, self.finished, self.eos, noise
        )

    def noise_for(self, sampling: Sampling) -> torch.Tensor | None:
        """The fixed noise buffer (B, noise_width) of a sampling setting; None for greedy."""
        if sampling.temperature == 0:
            return None
        width = noise_width(self.vocab_size, sampling.top_k)
        if width not in self.noise:
            self.noise[width] = static_address(
                torch.empty(self.token.size(0), width, device=self.device)
            )
        return self.noise[width]


def static_address(t: torch.Tensor) -> torch.Tensor:
    """Mark t as living at a fixed address for the compiled step: a CUDA graph reads and writes
    it where it is, instead of copying it in at each replay (and may mutate it)."""
    torch._dynamo.mark_static_address(t)
    return t


DecoderKey = tuple[int, torch.device, torch.dtype]
"""Batch size, device, dtype."""

DECODERS: weakref.WeakKeyDictionary[LanguageModel, dict[DecoderKey, StaticDecoder]] = (
    weakref.WeakKeyDictionary()
)
"""Each model's decoders by (batch size, device, dtype), dropped with the model."""


def decoder_for(model: LanguageModel, batch_size: int) -> StaticDecoder:
    """The model's decoder for batch_size rows, made at first use (its cache in the dtype and on
    the device of the model's weights)."""
    weight = model.lm_head.weight
    key: DecoderKey = (batch_size, weight.device, weight.dtype)
    decoders = DECODERS.setdefault(model, {})
    if key not in decoders:
        decoders[key] = StaticDecoder(model.config, batch_size, weight.device, weight.dtype)
    return decoders[key]


def decode_static(
    model: LanguageModel,
    seq: torch.Tensor,
    prompt_len: int,
    sampling: Sampling,
    eos_token: int | None,
    generator: torch.Generator | None,
    check_every: int = STOP_CHECK_EVERY,
) -> Iterator[torch.Tensor]:
    """Fill seq (B, prompt_len + new) from column prompt_len on with the compiled step, yielding
    each new column (B,), a view of seq; cropping as gpt.model.generate.decode does.

    With eos_token, a finished row gets eos_token from then on, and decoding stops after the
    column by which every row has finished if that is one of every check_every columns, else
    at the next such column (the columns between are eos_token in every row).
    """
    B, total = seq.shape
    S = model.config.block_size
    keep = max(1, S - S // 4)
    decoder = decoder_for(model, B)
    decoder.start(eos_token)
    position = decoder.prefill(model, seq[:, max(0, prompt_len - S) : prompt_len])
    for t in range(prompt_len, total):
        if position == S:  # the cache is full: crop the context to its last `keep` tokens
            position = decoder.prefill(model, seq[:, t - keep : t])
        decoder.step(model, sampling, generator)
        position += 1
        seq[:, t] = decoder.token
        yield seq[:, t]
        new = t + 1 - prompt_len
        if eos_token is not None and new % check_every == 0 and bool(decoder.finished.all()):
            return
