"""The GPT-2 model: exactly OpenAI's architecture, with Hugging Face parameter names.

Learned position embeddings, pre-LayerNorm blocks with biases, fused QKV projection, GELU (tanh),
4x MLP, final LayerNorm and an lm_head tied to the token embedding. Parameter names match
`transformers.GPT2LMHeadModel` (`transformer.h.0.attn.c_attn.weight`, ...), so conversion is a
key copy plus a short list of transposed Conv1D weights (see gpt/hf.py).

One forward serves every use. `GPT.hidden` runs the blocks and returns the final-LayerNorm hidden
states; its optional arguments cover what differs between uses:
    training      nothing: positions 0..T-1, causal attention; `forward` with targets adds the
                  chunked loss (gpt/model/loss.py) without materialising the logits
    decoding      `cache`: this call's keys and values are written at the cache's length and the
                  queries attend to everything cached; positions continue from that length
                  (gpt/model/generate.py); `linear` lets CPU decoding apply its own weight
                  layouts (gpt/model/cpu_decode.py)
    packed rows   `positions` restarting inside a row and a boolean `mask` (HellaSwag, several
                  sequences in one row); `logits` projects only the positions that need it

The module knows nothing of DDP, compile or autocast: the trainer applies them from outside.

    >>> from gpt.config import model_preset
    >>> model = GPT(model_preset("tiny"))
    >>> logits, _ = model(torch.zeros(1, 5, dtype=torch.long))
    >>> logits.shape
    torch.Size([1, 5, 512])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from gpt.config import GPTConfig
from gpt.model.loss import lm_loss

Linear = Callable[[nn.Linear, torch.Tensor], torch.Tensor]
"""How the blocks apply a linear layer to x: `linear(layer, x)`."""


def call_linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The default `Linear`: the layer itself, on its own weight."""
    return layer(x)


class Cache(Protocol):
    """The key/value cache forward reads and fills (gpt/model/generate.py's KVCache)."""

    length: int
    """Positions filled so far; the next token goes to position `length`."""

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (B, nh, S, hs) key and value buffers of layer i."""
        ...


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention through F.scaled_dot_product_attention."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # fused q, k, v
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.c_proj.residual_scaled_init = True  # type: ignore[assignment]

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        kv: tuple[torch.Tensor, torch.Tensor] | None,
        start: int,
        linear: Linear,
    ) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C).

        mask: bool, broadcastable to (B, 1, T, S), True where a query may attend to a key; None
        is causal, the T queries being the last T of the S keys. kv: this layer's cache buffers,
        where this call's keys and values go at positions start..start+T-1; the queries then
        attend to positions 0..start+T-1 (S = start + T).
        """
        B, T, C = x.shape
        qkv = linear(self.c_attn, x).view(B, T, 3, self.n_head, C // self.n_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, T, 3C) -> 3 x (B, nh, T, hs), views
        if kv is not None:
            k_cache, v_cache = kv
            k_cache[:, :, start : start + T] = k
            v_cache[:, :, start : start + T] = v
            k, v = k_cache[:, :, : start + T], v_cache[:, :, : start + T]  # (B, nh, S, hs)
        # Without a mask: causal for T > 1 (GPT.hidden passes a mask when the queries do not
        # start at key 0); a single query sees every key.
        causal = mask is None and T > 1
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, nh, T, hs) -> (B, T, C)
        return linear(self.c_proj, y)


class MLP(nn.Module):
    """Position-wise feed-forward network: 4x expansion with tanh-approximated GELU."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.c_proj.residual_scaled_init = True  # type: ignore[assignment]

    def forward(self, x: torch.Tensor, linear: Linear) -> torch.Tensor:
        return linear(self.c_proj, F.gelu(linear(self.c_fc, x), approximate="tanh"))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        start: int = 0,
        linear: Linear = call_linear,
    ) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); the other arguments as in `CausalSelfAttention.forward`."""
        x = x + self.attn(self.ln_1(x), mask, kv, start, linear)
        return x + self.mlp(self.ln_2(x), linear)


class GPT(nn.Module):
    """GPT-2 language model with a tied lm_head."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying
        self.apply(self._init_weights)  # tied weight is visited once, through wte

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 init: N(0, 0.02); residual projections N(0, 0.02/sqrt(2*n_layer)); zero biases."""
        if isinstance(module, nn.Linear):
            if module is self.lm_head:
                return  # tied to wte, initialised there
            std = 0.02
            if getattr(module, "residual_scaled_init", False):
                std /= math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

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
        """idx (B, T) int64 -> the final-LayerNorm hidden states (B, T, C).

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
        x = self.transformer.wte(idx) + self.transformer.wpe(positions)  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            kv = cache.layer(i) if cache is not None else None
            x = block(x, mask, kv, start, linear)
        if cache is not None:
            cache.length = start + T
        return self.transformer.ln_f(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., C) -> logits (..., vocab_size) of the real vocabulary."""
        return F.linear(hidden, self.real_vocab_rows())

    def real_vocab_rows(self) -> torch.Tensor:
        """The lm_head weight without its padded rows: (vocab_size, C), a view."""
        return self.lm_head.weight[: self.config.vocab_size]

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, tied embeddings counted once; non_embedding drops wpe and wte."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel() + self.transformer.wte.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token: 6N (forward + backward matmuls) plus attention 12*L*C*T.

        N excludes the position table (a lookup costs no FLOPs) but includes wte, whose tied
        lm_head matmul is real compute. Used to report MFU.
        """
        cfg = self.config
        T = seq_len if seq_len is not None else cfg.block_size
        n = self.num_params() - self.transformer.wpe.weight.numel()
        return 6 * n + 12 * cfg.n_layer * cfg.n_embd * T
