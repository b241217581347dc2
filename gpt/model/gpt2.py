"""The GPT-2 model: exactly OpenAI's architecture, with Hugging Face parameter names.

Learned position embeddings, pre-LayerNorm blocks with biases, fused QKV projection, GELU (tanh),
4x MLP, final LayerNorm and an lm_head tied to the token embedding. Parameter names match
`transformers.GPT2LMHeadModel` (`transformer.h.0.attn.c_attn.weight`, ...), so conversion is a
key copy plus a short list of transposed Conv1D weights (see gpt/hf.py).

The forward interface (optional positions, mask and KV cache; logits or the chunked loss) is the
one both families share, in gpt/model/base.py; this module only says what makes GPT-2 GPT-2.

The module knows nothing of DDP, compile or autocast: the trainer applies them from outside.

    >>> from gpt.config import model_preset
    >>> model = GPT(model_preset("tiny"))
    >>> logits, _ = model(torch.zeros(1, 5, dtype=torch.long))
    >>> logits.shape
    torch.Size([1, 5, 512])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gpt.config import GPTConfig
from gpt.model.base import LanguageModel, Linear, Where, attend


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
        where: Where,
        kv: tuple[torch.Tensor, torch.Tensor] | None,
        linear: Linear,
    ) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); where and kv as in gpt.model.base.attend."""
        B, T, C = x.shape
        qkv = linear(self.c_attn, x).view(B, T, 3, self.n_head, C // self.n_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, T, 3C) -> 3 x (B, nh, T, hs), views
        return linear(self.c_proj, attend(q, k, v, where, kv))


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
        where: Where,
        kv: tuple[torch.Tensor, torch.Tensor] | None,
        linear: Linear,
    ) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); where and kv as in gpt.model.base.attend."""
        x = x + self.attn(self.ln_1(x), where, kv, linear)
        return x + self.mlp(self.ln_2(x), linear)


class GPT(LanguageModel):
    """GPT-2 language model with a tied lm_head."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.arch != "gpt2":
            raise ValueError(f"GPT builds arch gpt2, not {config.arch} (see families.build_model)")
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
        self.tie_weights()  # GPT-2's lm_head is always the token embedding
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

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer.h

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.transformer.wte

    def embed(self, idx: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.transformer.wte(idx) + self.transformer.wpe(positions)  # (B, T, C)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.transformer.ln_f(x)

    @property
    def lookup_tables(self) -> list[torch.Tensor]:
        return [self.transformer.wpe.weight]  # wte is also the lm_head: its matmul is compute
