"""Configuration dataclasses and the named presets.

Each concern has one typed dataclass whose fields carry a one-line docstring (the string literal
under the field); command-line flags are generated from them. Presets are a named registry:

    >>> from gpt.config import model_preset
    >>> model_preset("gpt2").n_layer
    12
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class GPTConfig:
    """Shape of a GPT-2 model."""

    block_size: int = 1024
    """Maximum context length in tokens (GPT-2's n_positions)."""
    vocab_size: int = 50257
    """Number of real tokens in the vocabulary (ids >= this are padding, never predicted)."""
    n_layer: int = 12
    """Number of transformer blocks."""
    n_head: int = 12
    """Number of attention heads per block."""
    n_embd: int = 768
    """Width of the residual stream."""
    pad_vocab_multiple: int = 1
    """Pad the embedding table to a multiple of this (64 or 128 speeds up the lm_head matmul)."""
    layer_norm_eps: float = 1e-5
    """Epsilon of every LayerNorm (GPT-2 uses 1e-5)."""

    def __post_init__(self) -> None:
        for name in (
            "block_size",
            "vocab_size",
            "n_layer",
            "n_head",
            "n_embd",
            "pad_vocab_multiple",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"GPTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding table: vocab_size rounded up to pad_vocab_multiple."""
        m = self.pad_vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict[str, int | float]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        """Build from a dict, refusing unknown keys (a typo must not pass silently)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig keys: {', '.join(unknown)}")
        return cls(**d)


MODEL_PRESETS: dict[str, GPTConfig] = {
    # OpenAI's four GPT-2 sizes, exactly (parameter counts are checked against transformers).
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600),
    # A few million parameters: trains on a laptop CPU in minutes with a 4,096-token tokeniser.
    "demo": GPTConfig(block_size=256, vocab_size=4096, n_layer=4, n_head=4, n_embd=256),
    # The model every test uses.
    "tiny": GPTConfig(block_size=64, vocab_size=512, n_layer=2, n_head=2, n_embd=32),
}


def model_preset(name: str, **overrides: int | float) -> GPTConfig:
    """Return a fresh copy of a named model preset, with optional field overrides."""
    if name not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose from {', '.join(MODEL_PRESETS)}")
    return dataclasses.replace(MODEL_PRESETS[name], **overrides)
