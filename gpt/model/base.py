"""What both model families share: the forward interface, attention over a KV cache, the loss.

A family (gpt/model/gpt2.py, gpt/model/qwen3.py) is a `LanguageModel` that says how tokens enter
the residual stream (`embed`), what its blocks need to know about positions (`rotary`), its
blocks and its final norm. Everything else is written once, here:
    forward       logits, or the chunked loss with targets (gpt/model/loss.py)
    hidden        the blocks over the token ids, with optional positions, mask and KV cache
    attend        a block's attention after its projections: the cache write, then SDPA
so training, decoding (gpt/model/generate.py), CPU decoding layouts (gpt/model/cpu_decode.py) and
HellaSwag's packed rows (gpt/hellaswag/score.py) run either family through one path.

    >>> from gpt.config import model_preset
    >>> from gpt.model.families import build_model
    >>> model = build_model(model_preset("modern-tiny"))
    >>> logits, _ = model(torch.zeros(1, 5, dtype=torch.long))
    >>> logits.shape
    torch.Size([1, 5, 512])
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from gpt.config import GPTConfig
from gpt.model.loss import lm_loss

Linear = Callable[[nn.Linear, torch.Tensor], torch.Tensor]
"""How the blocks apply a linear layer to x: `linear(layer, x)`."""


def call_linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The default `Linear`: the layer itself, on its own weight."""
    return layer(x)


class Cache(Protocol):
    """The key/value cache forward reads and fills (gpt/model/decoding.py's KVCache)."""

    length: int | torch.Tensor
    """Positions filled so far; the next token goes to position `length`. A (B,) int64 tensor
    gives each row its own: the whole buffers are then attended under the caller's mask (hidden
    needs positions and mask), so that no shape depends on it (gpt/model/static_decode.py)."""

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (B, n_kv, S, hs) key and value buffers of layer i."""
        ...


@dataclass(frozen=True)
class Where:
    """What every block of one forward call knows about where its tokens are."""

    start: int | torch.Tensor
    """Positions already in the cache (0 without one): this call's keys go at start..start+T-1;
    a (B,) tensor for a cache with a length per row (see Cache.length)."""
    mask: torch.Tensor | None
    """Bool (B or 1, 1, T, S), True where a query may attend to a key; None is causal, the T
    queries being the last T of the S = start + T keys."""
    rotary: tuple[torch.Tensor, torch.Tensor] | None = None
    """cos and sin (B or 1, 1, T, hs) of each token's position (families with rotary embeddings)."""


# cuDNN's attention, which PyTorch tries first on recent GPUs (Hopper, Blackwell), builds an
# execution plan for every new shape: once for training's fixed (B, T), but tens of milliseconds
# on every step of decoding (one more key each time) and every packed HellaSwag batch (measured:
# 16 tokens/s at batch 1 on an H200). Calls whose shapes vary use the other kernels.
VARYING_SHAPE_KERNELS = [
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
]


def varying_shapes() -> AbstractContextManager[None]:
    """Attention without cuDNN's per-shape plans while in this context (see above); enter it
    around each forward call, not across a generator's yields (the setting is process-wide)."""
    return sdpa_kernel(VARYING_SHAPE_KERNELS)


def write_cache(
    kv: tuple[torch.Tensor, torch.Tensor],
    k: torch.Tensor,
    v: torch.Tensor,
    start: int | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Write k, v (B, n_kv, T, hs) into the cache buffers kv (B, n_kv, capacity, hs) from
    position start on -> the keys and values to attend to (B, n_kv, S, hs).

    start an int: the same positions in every row, and the S = start + T filled positions are
    attended. start a (B,) tensor: each row's own positions, and the whole buffers are attended
    (S = capacity, the caller's mask hiding what a row has not filled), so that no shape
    depends on the positions: the static decode step (gpt/model/static_decode.py).
    """
    k_cache, v_cache = kv
    T = k.size(2)
    if isinstance(start, int):
        k_cache[:, :, start : start + T] = k
        v_cache[:, :, start : start + T] = v
        return k_cache[:, :, : start + T], v_cache[:, :, : start + T]
    rows = torch.arange(k.size(0), device=k.device)[:, None]  # (B, 1)
    slots = start[:, None] + torch.arange(T, device=k.device)  # (B, T)
    # the two indexed dimensions, apart, go first: the target is (B, T, n_kv, hs)
    k_cache[rows, :, slots] = k.transpose(1, 2)
    v_cache[rows, :, slots] = v.transpose(1, 2)
    return k_cache, v_cache


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    where: Where,
    kv: tuple[torch.Tensor, torch.Tensor] | None,
) -> torch.Tensor:
    """Attention of q (B, nh, T, hs) over k, v (B, n_kv, T, hs) -> (B, T, nh * hs).

    kv: this layer's cache buffers (B, n_kv, capacity, hs); this call's keys and values are
    written at where.start and the queries attend to every cached position. With fewer key/value
    heads than query heads (grouped-query attention) each key/value head serves nh / n_kv
    consecutive query heads.
    """
    B, nh, T, hs = q.shape
    if kv is not None:
        k, v = write_cache(kv, k, v, where.start)  # (B, n_kv, S, hs)
    # Without a mask: causal for T > 1 (hidden passes a mask when the queries do not start at
    # key 0); a single query sees every key.
    causal = where.mask is None and T > 1
    grouped = {"enable_gqa": True} if k.size(1) != nh else {}
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=where.mask, is_causal=causal, **grouped)
    return y.transpose(1, 2).reshape(B, T, nh * hs)  # (B, nh, T, hs) -> (B, T, nh * hs)


class LanguageModel(nn.Module):
    """A decoder-only language model over `config.vocab_size` tokens (padded to
    `config.padded_vocab_size` rows): the interface every caller uses, whichever the family."""

    config: GPTConfig
    lm_head: nn.Linear

    @property
    @abstractmethod
    def blocks(self) -> nn.ModuleList:
        """The transformer blocks, in order; each is called as block(x, where, kv, linear)."""

    @property
    @abstractmethod
    def token_embedding(self) -> nn.Embedding:
        """The token embedding table (padded_vocab_size, C)."""

    def tie_weights(self) -> None:
        """Make the lm_head the token embedding when the config ties them (constructors call
        it; so does whoever gives the model new tensors, which undoes the tie)."""
        if self.config.tied:
            self.lm_head.weight = self.token_embedding.weight

    @property
    def tied_alias(self) -> set[str]:
        """State-dict keys that only alias another tensor (a tied lm_head): saved once, under
        the embedding's name."""
        return {"lm_head.weight"} if self.config.tied else set()

    @abstractmethod
    def embed(self, idx: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) at positions (B, T) or (T,) -> the residual stream (B, T, C)."""

    @abstractmethod
    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The norm after the last block, (B, T, C) -> (B, T, C)."""

    def rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """What the blocks need of the positions besides the embedding (see Where.rotary)."""
        return None

    @property
    def lookup_tables(self) -> list[torch.Tensor]:
        """Weights only ever looked up (an untied token embedding, GPT-2's positions): no
        matmul reads them, so they count for no FLOPs."""
        return []

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache: Cache | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """idx (B, T) int64 -> (logits (B, T, vocab_size), None) without targets, or
        (None, mean cross-entropy) with targets (B, T); positions, mask, cache as in `hidden`.

        Logits cover the real vocabulary only: padded ids can never be predicted. With targets
        the logits are never materialised whole (see `lm_loss`), so none are returned.
        """
        h = self.hidden(idx, positions=positions, mask=mask, cache=cache)  # (B, T, C)
        if targets is not None:
            return None, lm_loss(h, self.real_vocab_rows(), targets)
        return self.logits(h), None

    def hidden(
        self,
        idx: torch.Tensor,
        *,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        linear: Linear = call_linear,
    ) -> torch.Tensor:
        """idx (B, T) int64 -> the final-norm hidden states (B, T, C).

        positions (B, T) or (T,) int64: each token's position (default start..start+T-1, start
        being the cache's length, 0 without a cache). mask (B, T, S) bool: True where a token may
        attend to a key, S = start + T (default causal). cache: the keys and values of positions
        0..start-1; this call's are added and its length grows by T. linear: how the blocks
        apply their linear layers (default: the layers themselves; see gpt/model/cpu_decode.py).
        """
        T = idx.size(1)
        start = cache.length if cache is not None else 0
        if positions is None:
            if start + T > self.config.block_size:
                raise ValueError(
                    f"sequence length {start + T} exceeds block_size {self.config.block_size}"
                )
            positions = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
        if mask is not None:
            mask = mask[:, None]  # (B, 1, T, S): the same for every head
        elif start > 0 and T > 1:  # causal, the queries being the last T of the S keys
            mask = torch.ones(T, start + T, dtype=torch.bool, device=idx.device).tril(start)
        where = Where(start, mask, self.rotary(positions))
        x = self.embed(idx, positions)  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, where, cache.layer(i) if cache is not None else None, linear)
        if cache is not None:
            cache.length = start + T
        return self.final_norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., C) -> logits (..., vocab_size) of the real vocabulary."""
        return F.linear(hidden, self.real_vocab_rows())

    def real_vocab_rows(self) -> torch.Tensor:
        """The lm_head weight without its padded rows: (vocab_size, C), a view."""
        return self.lm_head.weight[: self.config.vocab_size]

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, a tied head counted once; non_embedding drops the embedding tables."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Embedding))
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token: 6N (forward + backward matmuls) plus attention 12*L*A*T,
        A = n_head * head_dim the attention width (C unless the heads are decoupled from it).

        N counts every weight a matmul reads: not the lookup tables (a lookup costs no FLOPs),
        but a tied embedding, whose lm_head matmul is real compute. Used to report MFU.
        """
        cfg = self.config
        T = seq_len if seq_len is not None else cfg.block_size
        n = self.num_params() - sum(w.numel() for w in self.lookup_tables)
        return 6 * n + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * T
