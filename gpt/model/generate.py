"""Text generation: the decoding loop, streamed or not, eager or through one compiled step.

    >>> from gpt.config import model_preset
    >>> from gpt.model.gpt2 import GPT
    >>> model = GPT(model_preset("tiny"))
    >>> generate(model, torch.zeros(1, 1, dtype=torch.long), 5, temperature=0).shape
    torch.Size([1, 6])

The prompt runs once through `LanguageModel.hidden` (gpt/model/base.py) with an empty cache
(prefill); then each new token costs one single-position pass that attends to every cached
position (the cache and the samplers: gpt/model/decoding.py). On CPU the weights are applied
through copies in faster layouts, made for the call (gpt/model/cpu_decode.py). With
`static=True` the tokens come from one compiled step of fixed shapes instead, a CUDA graph on
CUDA (gpt/model/static_decode.py): opt-in, because its compilation (tens of seconds, once per
batch size and sampling setting in a process) pays only over long or repeated generations, and
the eager loop is the faster one on CPU. inference.py is the command line over `generate` and
`generate_stream`; bench/generate.py and bench/gpu.py measure their speed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from gpt.cli import UserError
from gpt.model.base import LanguageModel, varying_shapes
from gpt.model.cpu_decode import LAYOUTS, DecodingWeights, decoding_weights
from gpt.model.decoding import KVCache, sample_next
from gpt.model.static_decode import STOP_CHECK_EVERY, Sampling, decode_static


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


def last_logits(
    model: LanguageModel, idx: torch.Tensor, cache: KVCache, weights: DecodingWeights
) -> torch.Tensor:
    """Run idx (B, T) from position cache.length on; the logits of its last position (B, V)."""
    with varying_shapes():  # the keys grow by one each step
        hidden = model.hidden(idx, cache=cache, linear=weights.linear)  # (B, T, C)
    return weights.logits(hidden[:, -1])


def decode(
    model: LanguageModel,
    seq: torch.Tensor,
    prompt_len: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    eos_token: int | None,
    generator: torch.Generator | None,
    layout: str | None = None,
) -> Iterator[torch.Tensor]:
    """Fill seq (B, prompt_len + new) from column prompt_len on, yielding each new column;
    layout: CPU decoding's weight layout (gpt/model/cpu_decode.py; default: this CPU's rule).

    Context longer than block_size: the prompt is cropped to its last block_size tokens.
    When the cache is full, the context is cropped to its last 3/4 * block_size tokens and
    the cache refilled from them (one prefill), so decoding continues with at least that
    much context and the refill cost is shared by block_size/4 new tokens.
    """
    B, total = seq.shape
    S = model.config.block_size
    keep = max(1, S - S // 4)
    start = max(0, prompt_len - S)
    capacity = min(S, total - start)
    weights = decoding_weights(model, B, layout)  # dropped at the end: nothing kept on the model
    dtype = model.lm_head.weight.dtype
    cache = KVCache(model.config, B, capacity, seq.device, dtype)
    logits = last_logits(model, seq[:, start:prompt_len], cache, weights)
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
            logits = last_logits(model, seq[:, t + 1 - keep : t + 1], cache, weights)
        else:
            logits = last_logits(model, token[:, None], cache, weights)


def new_columns(
    model: LanguageModel,
    seq: torch.Tensor,
    prompt_len: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    eos_token: int | None,
    generator: torch.Generator | None,
    static: bool,
    check_every: int = STOP_CHECK_EVERY,
    layout: str | None = None,
) -> Iterator[torch.Tensor]:
    """The new columns of seq from the eager loop (`decode`, in `layout`) or the compiled step
    (`decode_static`, checking for eos every check_every columns)."""
    if not static:
        return decode(
            model, seq, prompt_len, temperature, top_k, top_p, eos_token, generator, layout
        )
    sampling = Sampling(temperature, top_k, top_p)
    return decode_static(model, seq, prompt_len, sampling, eos_token, generator, check_every)


def columns_until_finished(new: torch.Tensor, eos_token: int) -> int:
    """How many of the new columns (B, n) the eager loop yields: up to the first column by
    which every row has produced eos_token, all n if some row never does.

        >>> columns_until_finished(torch.tensor([[5, 0, 0, 0], [7, 3, 0, 0]]), eos_token=0)
        3
    """
    done = ((new == eos_token).cumsum(dim=1) > 0).all(dim=0)  # (n,): every row finished
    return int(done.int().argmax()) + 1 if bool(done.any()) else new.size(1)


def output_buffer(
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
) -> torch.Tensor:
    """Validate the arguments; the output buffer (B, T + max_new_tokens) holding idx."""
    check_sampling(temperature, top_k, top_p, max_new_tokens)
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(f"idx must be (batch, tokens) with tokens >= 1, got {tuple(idx.shape)}")
    B, T = idx.shape
    seq = torch.empty(B, T + max_new_tokens, dtype=torch.long, device=idx.device)
    seq[:, :T] = idx
    return seq


@torch.inference_mode()
def generate(
    model: LanguageModel,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token: int | None = None,
    generator: torch.Generator | None = None,
    static: bool = False,
    layout: str | None = None,
) -> torch.Tensor:
    """Continue every row of idx (B, T) by up to max_new_tokens tokens -> (B, T + new).

    temperature 0 is greedy; top_k / top_p restrict sampling (see gpt.model.decoding's
    `sampling_distribution`); several samples of one prompt are rows repeated by the caller. A
    row that produced eos_token is filled with eos_token from then on, and generation stops
    early once every row has (so `new` may be less than max_new_tokens). static: decode with
    the compiled step of fixed shapes (gpt/model/static_decode.py; the same greedy tokens, other
    random draws), a CUDA graph on CUDA. layout: the eager loop's CPU weight layout, one of
    gpt.model.cpu_decode.LAYOUTS instead of the one this CPU's rule picks (for benchmarks).
    """
    if layout is not None and (static or layout not in LAYOUTS):
        raise ValueError(f"layout must be one of {sorted(LAYOUTS)} without static, got {layout}")
    seq = output_buffer(idx, max_new_tokens, temperature, top_k, top_p)
    T = idx.size(1)
    if max_new_tokens == 0:
        return seq
    steps = new_columns(
        model, seq, T, temperature, top_k, top_p, eos_token, generator, static, layout=layout
    )
    new = sum(1 for _ in steps)
    if static and eos_token is not None:  # it checks every few columns: keep the eager loop's
        new = columns_until_finished(seq[:, T : T + new], eos_token)
    return seq[:, : T + new]


@torch.inference_mode()
def generate_stream(
    model: LanguageModel,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token: int | None = None,
    generator: torch.Generator | None = None,
    static: bool = False,
) -> Iterator[torch.Tensor]:
    """Like `generate`, but yield each new token column (B,) as soon as it is sampled (with
    static and eos_token, the check for every row's end waits for each column, as its reader
    does)."""
    seq = output_buffer(idx, max_new_tokens, temperature, top_k, top_p)
    if max_new_tokens > 0:
        yield from new_columns(model, seq, idx.size(1), temperature, top_k, top_p, eos_token,
                          generator, static, check_every=1)  # fmt: skip
