"""Text generation: the key/value cache, sampling, and the decoding loop, streamed or not.

    >>> from gpt.config import model_preset
    >>> from gpt.model.gpt2 import GPT
    >>> model = GPT(model_preset("tiny"))
    >>> generate(model, torch.zeros(1, 1, dtype=torch.long), 5, temperature=0).shape
    torch.Size([1, 6])

The prompt runs once through `LanguageModel.hidden` (gpt/model/base.py) with an empty cache
(prefill); then each new token costs one single-position pass that attends to every cached
position. On CPU the weights are applied
through copies in faster layouts, made for the call (gpt/model/cpu_decode.py). inference.py is the
command line over `generate` and `generate_stream`; bench/generate.py measures their speed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from gpt.cli import UserError
from gpt.config import GPTConfig
from gpt.model.base import LanguageModel, varying_shapes
from gpt.model.cpu_decode import DecodingWeights, decoding_weights


class KVCache:
    """Preallocated keys and values of every layer for a batch, filled from position 0 on
    (positions at or after `length` are never read, so the buffers start uninitialised); the
    `Cache` that LanguageModel.hidden reads and extends."""

    def __init__(
        self,
        config: GPTConfig,
        batch_size: int,
        capacity: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        shape = (config.n_layer, batch_size, config.kv_heads, capacity, config.head_dim)
        self.k = torch.empty(shape, device=device, dtype=dtype)  # (L, B, n_kv, S, hs)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.capacity = capacity
        self.length = 0
        """Positions filled so far; the next token goes to position `length`."""

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (B, n_kv, S, hs) key and value buffers of layer i."""
        return self.k[i], self.v[i]


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
    if temperature == 0:  # max's indices are argmax's (the first of equal maxima), 3-4x faster
        return logits.max(dim=-1).indices
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
) -> Iterator[torch.Tensor]:
    """Fill seq (B, prompt_len + new) from column prompt_len on, yielding each new column.

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
    weights = decoding_weights(model, B)  # dropped when the loop ends: nothing kept on the model
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
) -> torch.Tensor:
    """Continue every row of idx (B, T) by up to max_new_tokens tokens -> (B, T + new).

    temperature 0 is greedy; top_k / top_p restrict sampling (see `sample_next`); several
    samples of one prompt are rows repeated by the caller. A row that produced eos_token is
    filled with eos_token from then on, and generation stops early once every row has
    (so `new` may be less than max_new_tokens).
    """
    seq = output_buffer(idx, max_new_tokens, temperature, top_k, top_p)
    T = idx.size(1)
    if max_new_tokens == 0:
        return seq
    steps = decode(model, seq, T, temperature, top_k, top_p, eos_token, generator)
    new = sum(1 for _ in steps)
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
) -> Iterator[torch.Tensor]:
    """Like `generate`, but yield each new token column (B,) as soon as it is sampled."""
    seq = output_buffer(idx, max_new_tokens, temperature, top_k, top_p)
    if max_new_tokens > 0:
        yield from decode(model, seq, idx.size(1), temperature, top_k, top_p, eos_token, generator)
