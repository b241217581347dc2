"""What both decoding loops share: the preallocated key/value cache and the token pickers.

gpt/model/generate.py decodes step by step in eager PyTorch (the cache's length an int, keys
attended up to it); gpt/model/static_decode.py runs one compiled step of fixed shapes (each row's
length a tensor, the whole cache attended under a mask). Both sample from the same filtered
distribution (`sampling_distribution`): the eager loop with torch.multinomial, the compiled step
with exponential noise drawn beforehand (`sample_with_noise`), which needs no host
synchronisation and no random state inside the step.

    >>> logits = torch.tensor([[0.0, 2.0, 1.0]])
    >>> sample_next(logits, temperature=0)
    tensor([1])
    >>> noise = torch.tensor([[9.0, 1.0]])  # Exp(1) draws for the top 2: tokens 1 and 2
    >>> sample_with_noise(logits, noise, 1.0, top_k=2)  # 0.73 / 9 < 0.27 / 1
    tensor([2])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gpt.config import GPTConfig


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
        self.length: int | torch.Tensor = 0
        """Positions filled so far; the next token goes to position `length` (an int: the same
        for every row; see gpt.model.base.Cache for a tensor)."""

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (B, n_kv, S, hs) key and value buffers of layer i."""
        return self.k[i], self.v[i]


def sampling_distribution(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The probabilities to sample the next token from: logits (B, V), temperature > 0 ->
    (probs (B, n), ids (B, n) or None): ids[b, j] is the token of probs[b, j], None when n = V
    and the columns are the tokens themselves.

    top_k keeps the k most likely tokens; top_p keeps the smallest set of most likely tokens whose
    probability reaches top_p (nucleus sampling), the most likely token always included (the
    others get probability 0, the rest is not renormalised: both samplers do not need it). Both
    may be combined (top_k first).
    """
    logits = logits.float() / temperature
    if top_k is None and top_p is None:
        return F.softmax(logits, dim=-1), None
    if top_k is not None and top_k < logits.size(-1):
        logits, ids = torch.topk(logits, top_k, dim=-1)  # (B, k), sorted descending
    else:
        logits, ids = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = F.softmax(logits, dim=-1)
    if top_p is not None:
        mass_before = probs.cumsum(dim=-1) - probs  # probability of the more likely tokens
        probs = probs.masked_fill(mass_before >= top_p, 0.0)
    return probs, ids


def token_of(choice: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
    """Column choice (B, 1) of a `sampling_distribution` -> the tokens (B,)."""
    return (choice if ids is None else ids.gather(-1, choice)).squeeze(1)


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """The most likely token of each row (B, V) -> (B,): max's indices are argmax's (the first
    of equal maxima), 3-4x faster on the Intel Xeon (as fast on the AVX2-only EPYC)."""
    return logits.max(dim=-1).indices


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token of each row of logits (B, V) -> (B,) int64.

    temperature 0 is greedy (argmax); otherwise a draw from `sampling_distribution`.
    """
    if temperature == 0:
        return greedy(logits)
    probs, ids = sampling_distribution(logits, temperature, top_k, top_p)
    return token_of(torch.multinomial(probs, 1, generator=generator), ids)


def noise_width(vocab_size: int, top_k: int | None) -> int:
    """Columns of the noise `sample_with_noise` takes: those of `sampling_distribution`."""
    return top_k if top_k is not None and top_k < vocab_size else vocab_size


def sample_with_noise(
    logits: torch.Tensor,
    noise: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """`sample_next` with the randomness given: noise (B, noise_width) holds independent Exp(1)
    draws (Tensor.exponential_), and each row picks the column of largest probs / noise, which is
    column j with probability probs[j] / sum(probs) (the exponential race, as gpt-fast samples).
    Columns of probability 0 are never picked, even against a noise of 0.
    """
    if temperature == 0:
        return greedy(logits)
    probs, ids = sampling_distribution(logits, temperature, top_k, top_p)
    score = torch.where(probs > 0, probs / noise, -1.0)  # (B, n)
    return token_of(score.argmax(dim=-1, keepdim=True), ids)
