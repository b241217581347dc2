"""The modern family: the Qwen3 layout, with Hugging Face's Qwen3 parameter names.

Token embedding; pre-norm RMSNorm blocks; attention without biases, with rotary position
embeddings and an RMSNorm on each head's queries and keys (QK-norm), optionally with fewer
key/value heads than query heads (grouped-query attention); a SwiGLU MLP (gate, up, down); a
final RMSNorm; an lm_head untied from the embedding unless `tie_embeddings`. Parameter names
match `transformers.Qwen3ForCausalLM` (`model.layers.0.self_attn.q_proj.weight`, ...), so export
and import are a key copy (gpt/hf.py) and transformers, vLLM and llama.cpp's converters load an
export with no custom code.

The output projections (attention out, MLP down) and an untied head start at zero: each block
starts as the identity and the first logits are uniform; the other matrices and the embedding
start at N(0, 0.02), the norm gains at one. Rotary embeddings carry the positions, so decoding
continues them across the KV cache and HellaSwag's packed rows restart them after the context
simply by passing positions (gpt/model/base.py).

    python train.py --preset modern-demo     # the CPU demo's data with this model and Muon
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gpt.config import GPTConfig
from gpt.model.base import LanguageModel, Linear, Where, attend


class RMSNorm(nn.Module):
    """x / rms(x) * weight over the last dimension, computed in at least float32 (as Qwen3's
    reference does under bf16), returned in x's dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)
        y = F.rms_norm(x.to(dtype), (x.size(-1),), self.weight.to(dtype), self.eps)
        return y.to(x.dtype)


def rotary_angles(
    positions: torch.Tensor, head_dim: int, theta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of each position's rotary angles: positions (B, T) or (T,) -> two (B or 1,
    1, T, head_dim) float32 tensors, the head_dim / 2 frequencies theta^(-2i/head_dim) each
    repeated for the two halves of a head (Qwen3's rotate-half pairing: i with i + head_dim/2).

        >>> cos, sin = rotary_angles(torch.tensor([0, 1]), head_dim=4, theta=100.0)
        >>> cos[0, 0, 1]  # position 1, frequencies 1 and 1/10 (100^(-2/4)), each twice
        tensor([0.5403, 0.9950, 0.5403, 0.9950])
    """
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device)
    inv_freq = 1.0 / (theta ** (exponents.float() / head_dim))  # (hs/2,)
    angles = positions.float()[..., None] * inv_freq  # (B, T, hs/2) or (T, hs/2)
    angles = torch.cat((angles, angles), dim=-1)  # (..., T, hs)
    if angles.dim() == 2:
        angles = angles[None]
    return angles.cos()[:, None], angles.sin()[:, None]  # (B or 1, 1, T, hs)


def rotate(x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate each head's pairs (i, i + hs/2) of x (B, nh, T, hs) by its position's angles."""
    cos, sin = (t.to(x.dtype) for t in rotary)
    half = x.size(-1) // 2
    rotated_half = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated_half * sin


class Attention(nn.Module):
    """Self-attention with QK-norm, rotary positions and optional grouped key/value heads."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        C, hs = config.n_embd, config.head_dim
        self.q_proj = nn.Linear(C, self.n_head * hs, bias=False)
        self.k_proj = nn.Linear(C, self.n_kv * hs, bias=False)
        self.v_proj = nn.Linear(C, self.n_kv * hs, bias=False)
        self.o_proj = nn.Linear(self.n_head * hs, C, bias=False)
        self.o_proj.zero_init = True  # type: ignore[assignment]
        self.q_norm = RMSNorm(hs, config.layer_norm_eps)
        self.k_norm = RMSNorm(hs, config.layer_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        where: Where,
        kv: tuple[torch.Tensor, torch.Tensor] | None,
        linear: Linear,
    ) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); where (with rotary) and kv as in gpt.model.base.attend."""
        assert where.rotary is not None
        B, T, _ = x.shape
        q = self.q_norm(linear(self.q_proj, x).view(B, T, self.n_head, self.head_dim))
        k = self.k_norm(linear(self.k_proj, x).view(B, T, self.n_kv, self.head_dim))
        v = linear(self.v_proj, x).view(B, T, self.n_kv, self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, T, hs)
        q, k = rotate(q, where.rotary), rotate(k, where.rotary)
        return linear(self.o_proj, attend(q, k, v, where, kv))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        C, hidden = config.n_embd, config.mlp_size
        self.gate_proj = nn.Linear(C, hidden, bias=False)
        self.up_proj = nn.Linear(C, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, C, bias=False)
        self.down_proj.zero_init = True  # type: ignore[assignment]

    def forward(self, x: torch.Tensor, linear: Linear) -> torch.Tensor:
        gate = F.silu(linear(self.gate_proj, x))
        return linear(self.down_proj, gate * linear(self.up_proj, x))


class Block(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.n_embd, config.layer_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.n_embd, config.layer_norm_eps)
        self.mlp = SwiGLU(config)

    def forward(
        self,
        x: torch.Tensor,
        where: Where,
        kv: tuple[torch.Tensor, torch.Tensor] | None,
        linear: Linear,
    ) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); where and kv as in gpt.model.base.attend."""
        x = x + self.self_attn(self.input_layernorm(x), where, kv, linear)
        return x + self.mlp(self.post_attention_layernorm(x), linear)


class Qwen3(LanguageModel):
    """A language model in the Qwen3 layout (see the module docstring)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.arch != "qwen3":
            raise ValueError(f"Qwen3 builds arch qwen3, not {config.arch}")
        self.config = config
        self.model = nn.ModuleDict(
            dict(
                embed_tokens=nn.Embedding(config.padded_vocab_size, config.n_embd),
                layers=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                norm=RMSNorm(config.n_embd, config.layer_norm_eps),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.lm_head.zero_init = not config.tied  # type: ignore[assignment]
        self.tie_weights()
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """Zero for the output projections and an untied head, N(0, 0.02) for the other
        matrices and the embedding (a tied head is visited as the embedding), one for gains."""
        if isinstance(module, nn.Linear):
            if getattr(module, "zero_init", False):
                nn.init.zeros_(module.weight)
            elif module is not self.lm_head:  # a tied head is initialised as the embedding
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.model.embed_tokens

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.layers

    def embed(self, idx: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(idx)  # (B, T, C): positions enter through `rotary`

    def rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rotary_angles(positions, self.config.head_dim, self.config.rope_theta)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.norm(x)

    @property
    def lookup_tables(self) -> list[torch.Tensor]:
        return [] if self.config.tied else [self.model.embed_tokens.weight]
