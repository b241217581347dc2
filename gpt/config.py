"""Configuration dataclasses and the named presets.

Each concern has one typed dataclass whose fields carry a one-line docstring (the string literal
under the field); command-line flags are generated from them. Presets are a named registry:

    >>> from gpt.config import model_preset
    >>> model_preset("gpt2").n_layer
    12
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt.cli import UserError, excerpt, option

ARCHITECTURES = ("gpt2", "qwen3")


@dataclass(frozen=True)
class Range:
    """The values a numeric setting accepts: an interval whose ends may be open, closed or
    absent, and the words it takes instead of a number (batch_size's "auto"). NaN and the
    infinities are never in a range.

    >>> [str(r) for r in (Range(0, 1, high_open=True), Range(low=1), Range(0, low_open=True))]
    ['in [0, 1)', '>= 1', '> 0']
    >>> 1.0 in Range(0, 1, high_open=True), float("nan") in Range(low=0)
    (False, False)
    >>> str(Range(low=1, words=("auto",))), "auto" in Range(low=1, words=("auto",))
    ('>= 1 or auto', True)
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    words: tuple[str, ...] = ()
    """Values other than numbers that the setting accepts."""

    def __contains__(self, value: float | str) -> bool:
        if isinstance(value, str):
            return value in self.words
        if not _finite(value):
            return False
        above = self.low is None or value > self.low or (value == self.low and not self.low_open)
        below = (
            self.high is None or value < self.high or (value == self.high and not self.high_open)
        )
        return above and below

    def __str__(self) -> str:
        return " or ".join((self._interval(), *self.words))

    def _interval(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low}, {self.high}{right}"


AT_LEAST_1 = Range(low=1)
NON_NEGATIVE = Range(low=0)
POSITIVE = Range(low=0, low_open=True)
UNIT_INTERVAL = Range(0, 1)
BELOW_1 = Range(0, 1, high_open=True)  # a decay or momentum coefficient
SEED = Range(0, 2**64 - 1)  # what torch.manual_seed takes and numpy's generators accept


def check_ranges(obj: Any, ranges: Mapping[str, Range], name: Callable[[str], str]) -> None:
    """Refuse the first field of `obj` (in the table's order) whose value, when not None, lies
    outside its range: a UserError naming it as `name(field)`, e.g. `--beta2 must be in [0, 1),
    got 1.5`."""
    for field_name, allowed in ranges.items():
        value = getattr(obj, field_name)
        if value is not None and value not in allowed:
            if isinstance(value, str):  # a word the range does not take (from a config file)
                raise UserError(f"{name(field_name)} must be {allowed}, got {excerpt(value)}")
            finite = "" if _finite(value) else "a finite number "
            raise UserError(f"{name(field_name)} must be {finite}{allowed}, got {value}")


def _finite(value: float) -> bool:
    """Whether a number is finite (an int always is, however large: math.isfinite would
    convert it to a float and overflow)."""
    return isinstance(value, int) or math.isfinite(value)


def flag_name(field_name: str) -> str:
    """The command-line flag of a dataclass field (gpt/cli.py's spelling): max_lr -> --max-lr."""
    return "--" + field_name.replace("_", "-")


AUTO_BATCH = "auto"
"""The batch_size that asks for the largest micro-batch the device's memory holds."""


def batch_size_arg(text: str) -> int | str:
    """--batch-size's value: a whole number of sequences (its range is checked with the other
    settings'), or auto.

    >>> batch_size_arg("16"), batch_size_arg("auto")
    (16, 'auto')
    """
    if text == AUTO_BATCH:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a batch size: {excerpt(text)} (a number of sequences, or {AUTO_BATCH})"
        ) from None


def check_heads(shape: Mapping[str, Any], arch: str, said: Callable[[str], str]) -> None:
    """Refuse heads that do not fit the width: `shape`'s n_embd split into whole heads (unless
    head_size decouples them), query heads into whole key/value groups, and for qwen3 an even
    head size (rotary embeddings turn pairs of dimensions). `said(field)` names a number and
    where it came from, for the message.

        >>> check_heads({"n_embd": 96, "n_head": 6, "n_kv_head": 4}, "qwen3", lambda name: name)
        Traceback (most recent call last):
        gpt.cli.UserError: n_head must be a multiple of n_kv_head
        >>> check_heads({"n_embd": 96, "n_head": 32}, "qwen3", str.upper)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        gpt.cli.UserError: N_EMBD / N_HEAD = 3: the head size must be even (rotary ...)
    """
    head_size = shape.get("head_size")
    if head_size is None and shape["n_embd"] % shape["n_head"]:
        raise UserError(f"{said('n_embd')} must be divisible by {said('n_head')}")
    if shape["n_head"] % (shape.get("n_kv_head") or shape["n_head"]):
        raise UserError(f"{said('n_head')} must be a multiple of {said('n_kv_head')}")
    rotary = "the head size must be even (rotary position embeddings turn pairs of dimensions)"
    if arch == "qwen3" and head_size is not None and head_size % 2:
        raise UserError(f"{said('head_size')}: {rotary}")
    if arch == "qwen3" and head_size is None and shape["n_embd"] // shape["n_head"] % 2:
        size = shape["n_embd"] // shape["n_head"]
        raise UserError(f"{said('n_embd')} / {said('n_head')} = {size}: {rotary}")


@dataclass
class GPTConfig:
    """Shape of a model of either family: GPT-2 (`arch` gpt2) or the Qwen3 layout (qwen3).

    The qwen3-only fields (n_kv_head, ffn_size, rope_theta, untied head) are refused for gpt2,
    whose shape is fixed by OpenAI's architecture.
    """

    arch: str = "gpt2"
    """Model family: gpt2 (gpt/model/gpt2.py) or qwen3 (gpt/model/qwen3.py)."""

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
    """Epsilon of every norm layer (GPT-2's LayerNorms use 1e-5, Qwen3's RMSNorms 1e-6)."""
    n_kv_head: int | None = None
    """Key/value heads (qwen3; fewer than n_head is grouped-query attention; default n_head)."""
    ffn_size: int | None = None
    """Width of the SwiGLU MLP (qwen3; default 8/3 n_embd rounded up to a multiple of 64, which
    gives a block GPT-2's parameter count)."""
    rope_theta: float = 10000.0
    """Base of the rotary position embedding's frequencies (qwen3)."""
    tie_embeddings: bool | None = None
    """Share the lm_head with the token embedding (default: gpt2 yes, qwen3 no)."""
    head_size: int | None = None
    """Width of each attention head (qwen3; default n_embd / n_head). Qwen3's released models
    decouple it from the width: Qwen3-0.6B is 1024 wide with 16 query heads of 128."""

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise UserError(f"arch must be one of {', '.join(ARCHITECTURES)}, got {self.arch!r}")
        if self.arch == "gpt2":
            self._refuse_qwen3_fields()
        check_ranges(self, MODEL_RANGES, lambda name: f"GPTConfig.{name}")
        check_heads(vars(self), self.arch, lambda name: f"GPTConfig.{name} {getattr(self, name)}")

    def _refuse_qwen3_fields(self) -> None:
        """GPT-2's shape is OpenAI's: its MLP, heads, positions and tied head are not options."""
        changed = [
            name
            for name, value in (
                ("n_kv_head", self.n_kv_head not in (None, self.n_head)),
                ("ffn_size", self.ffn_size is not None),
                ("rope_theta", self.rope_theta != 10000.0),
                ("tie_embeddings", self.tie_embeddings is False),
                ("head_size", self.head_size not in (None, self.n_embd // self.n_head)),
            )
            if value
        ]
        if changed:
            raise UserError(f"{', '.join(changed)}: only for arch qwen3 (GPT-2's shape is fixed)")

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding table: vocab_size rounded up to pad_vocab_multiple."""
        m = self.pad_vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    @property
    def head_dim(self) -> int:
        """Width of one attention head: head_size, or n_embd / n_head."""
        return self.head_size or self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """Key/value heads: n_kv_head, or n_head when not given."""
        return self.n_kv_head or self.n_head

    @property
    def mlp_size(self) -> int:
        """Hidden width of the MLP: GPT-2's 4 n_embd, or qwen3's ffn_size (see its default)."""
        if self.arch == "gpt2":
            return 4 * self.n_embd
        return self.ffn_size or (8 * self.n_embd // 3 + 63) // 64 * 64

    @property
    def tied(self) -> bool:
        """Whether the lm_head is the token embedding (see tie_embeddings)."""
        return self.tie_embeddings if self.tie_embeddings is not None else self.arch == "gpt2"

    def to_dict(self) -> dict[str, int | float]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        """Build from a dict, refusing unknown keys (a typo must not pass silently) and values
        of another type (a checkpoint's config.json is not trusted)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown GPTConfig keys: {', '.join(unknown)}")
        return cls(**checked_types(cls, d))


# The range of each numeric GPTConfig field, checked in field order when a shape is built.
MODEL_RANGES: dict[str, Range] = {
    "block_size": AT_LEAST_1,
    "vocab_size": AT_LEAST_1,
    "n_layer": AT_LEAST_1,
    "n_head": AT_LEAST_1,
    "n_embd": AT_LEAST_1,
    "pad_vocab_multiple": AT_LEAST_1,
    "layer_norm_eps": POSITIVE,
    "n_kv_head": AT_LEAST_1,
    "ffn_size": AT_LEAST_1,
    "rope_theta": POSITIVE,
    "head_size": Range(low=2),  # and even: rotary embeddings turn pairs
}


def _modern(**shape: int) -> GPTConfig:
    """A model preset of the Qwen3 family: RMSNorm at Qwen3's epsilon, the rest as given."""
    return GPTConfig(arch="qwen3", layer_norm_eps=1e-6, **shape)


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
    # The Qwen3 layout at GPT-2's four sizes: the same width, depth and heads, and blocks of the
    # same parameter count (SwiGLU at 8/3 width), so the compute per token is GPT-2's; the untied
    # lm_head adds parameters but no compute (a lookup table is free).
    "modern": _modern(n_layer=12, n_head=12, n_embd=768),
    "modern-medium": _modern(n_layer=24, n_head=16, n_embd=1024),
    "modern-large": _modern(n_layer=36, n_head=20, n_embd=1280),
    "modern-xl": _modern(n_layer=48, n_head=25, n_embd=1600),
    "modern-demo": _modern(block_size=256, vocab_size=4096, n_layer=4, n_head=4, n_embd=256),
    # The tests' model of the family, with grouped-query attention (2 query heads per kv head).
    "modern-tiny": _modern(
        block_size=64, vocab_size=512, n_layer=2, n_head=4, n_kv_head=2, n_embd=32
    ),
}


def model_preset(name: str, **overrides: int | float) -> GPTConfig:
    """Return a fresh copy of a named model preset, with optional field overrides."""
    if name not in MODEL_PRESETS:
        raise UserError(f"unknown model preset {name!r}; choose from {', '.join(MODEL_PRESETS)}")
    return dataclasses.replace(MODEL_PRESETS[name], **overrides)


@dataclass
class TrainConfig:
    """A training run: data, model, batch, optimizer, schedule, evaluation, checkpoints, logs.

    The defaults are the GPT-α 124M recipe (`gpt2` preset) on fineweb-edu 10B.
    """

    data: str = "cache/fineweb_edu_10B"
    """Prepared dataset directory (shards + manifest.json, from fineweb.py)."""
    out: str = "runs/gpt2"
    """Run directory: config.json, metrics.jsonl, log.txt, checkpoints/, export/, plots/."""
    tokeniser: str = "gpt2"
    """Tokeniser spec ("gpt2" or a .tkn file); must match the dataset's manifest."""
    model: str = "gpt2"
    """Model preset (gpt2[-medium|-large|-xl], demo, tiny, modern[-medium|-large|-xl|-demo|-tiny]);
    vocab from the data."""
    n_layer: int | None = None
    """Transformer blocks (default: the model preset's)."""
    n_embd: int | None = None
    """Width of the residual stream (default: the model preset's)."""
    n_head: int | None = None
    """Attention heads per block; must divide the width (default: the model preset's)."""
    n_kv_head: int | None = None
    """Key/value heads of the modern family; must divide --n-head (default: the preset's)."""
    ffn_size: int | None = None
    """Width of the modern family's SwiGLU MLP (default: the preset's, 8/3 of the width)."""
    pad_vocab_multiple: int = 128
    """Pad the embedding table to a multiple of this (50,257 -> 50,304 with 128)."""
    device: str = "auto"
    """cuda, mps, cpu, or auto (CUDA, else MPS, else CPU)."""
    dtype: str = "auto"
    """Autocast dtype: auto (bfloat16 on GPUs that multiply it natively, float32 elsewhere),
    bfloat16 or float32."""
    compile: bool | None = None
    """torch.compile the training step (default: on for CUDA, off elsewhere)."""
    fsdp: bool = False
    """Shard parameters, gradients and optimizer state with FSDP2 instead of DDP."""
    deterministic: bool = False
    """Deterministic kernels only (torch.use_deterministic_algorithms, no cuDNN attention): on
    a GPU two runs, or a run and its resume, then give bit-identical losses. CPU runs are
    deterministic without it."""
    batch_size: int | str = option(64, parse=batch_size_arg)
    """Micro-batch size per device (sequences), or auto: the largest that fits the device's
    memory, found when a new run starts, the accumulation keeping total_batch_size
    (gpt/train/batch.py); the choice is saved with the run."""
    seq_len: int = 1024
    """Sequence length of a training row (tokens); at most the model's block_size."""
    total_batch_size: int = 524288
    """Tokens per optimizer step; a multiple of batch_size * seq_len * world size."""
    max_lr: float = 1.8e-3
    """Peak learning rate, reached after the warm-up."""
    min_lr_ratio: float = 0.04
    """Final learning rate as a fraction of max_lr (cosine decay ends there)."""
    warmup_steps: int = 715
    """Linear warm-up steps from max_lr / warmup_steps to max_lr."""
    max_steps: int | None = None
    """Optimizer steps (default: `epochs` passes over the training split)."""
    epochs: int = 1
    """Passes over the training split when max_steps is not given."""
    weight_decay: float = 0.1
    """AdamW weight decay, applied to >= 2-D parameters only (matmuls and embeddings)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    eps: float = 1e-8
    """AdamW epsilon."""
    optimizer: str = "adamw"
    """adamw (every parameter), or muon (Muon for the blocks' matrices, AdamW for the rest)."""
    schedule: str = "cosine"
    """Learning-rate schedule after the warm-up: cosine decay, or wsd (flat, then linear decay)."""
    decay_frac: float = 0.2
    """Fraction of max_steps spent in the wsd schedule's final linear decay (0 < f <= 1)."""
    muon_lr: float = 0.02
    """Peak learning rate of the Muon group (--optimizer muon)."""
    muon_momentum: float = 0.95
    """Muon's (Nesterov) momentum."""
    muon_weight_decay: float = 0.0
    """Muon's decoupled weight decay."""
    embed_lr: float | None = None
    """Peak AdamW learning rate of the embedding tables with --optimizer muon (default max_lr)."""
    head_lr: float | None = None
    """Peak AdamW learning rate of an untied lm_head with --optimizer muon (default max_lr)."""
    base_width: int | None = None
    """Width at which --optimizer muon's rates were tuned: at another width the head's rate
    scales by base_width / width (gpt/train/recipe.py, `peak_rates`); default: rates as given."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables clipping)."""
    seed: int = 1337
    """Seed of the weights' initialisation and of the data order."""
    eval_every: int = 150
    """Validation loss, HellaSwag and samples every this many steps (and at the end)."""
    val_tokens: int = 10_485_760
    """Validation budget in tokens (capped by the validation split)."""
    hellaswag: str = "auto"
    """HellaSwag jsonl: a path, auto (HELLASWAG_FILE, else the cache, downloaded once) or off."""
    hellaswag_limit: int | None = None
    """Score only the first N HellaSwag examples (default: all 10,042)."""
    samples: int = 4
    """Sequences sampled at each evaluation (0: none)."""
    sample_prompt: str = "Hello, I'm a language model,"
    """Prompt of the samples."""
    sample_tokens: int = 32
    """New tokens per sample."""
    sample_temperature: float = 1.0
    """Sampling temperature."""
    sample_top_k: int = 50
    """Sample among the k most likely tokens (0: all)."""
    sample_seed: int = 42
    """Seed of the sampling generator (the same at every evaluation)."""
    save_every: int = 1500
    """Write a checkpoint every this many steps (0: only best and final)."""
    keep: int = 2
    """Keep the last this many checkpoints, plus the best."""
    resume: str | None = None
    """Resume: latest (the newest checkpoint in --out) or a checkpoint directory."""
    export: bool = True
    """Export the best checkpoint as a Hugging Face model directory (RUN/export) at the end."""
    plot: bool = True
    """Write the run's plots to RUN/plots at the end (needs matplotlib)."""
    log_every: int = 1
    """Print a console line every this many steps (metrics.jsonl gets every step)."""
    progress: bool = True
    """Show a progress bar with ETA."""
    peak_flops: float | None = None
    """Peak FLOP/s of one device for MFU (default: known GPUs' datasheet peak, measured on CPU)."""
    tensorboard: bool = False
    """Also log to TensorBoard (RUN/tensorboard; needs the tensorboard package)."""
    wandb: bool = False
    """Also log to Weights & Biases (needs the wandb package)."""
    wandb_project: str = "gpt-alpha"
    """Weights & Biases project name."""

    def __post_init__(self) -> None:
        """Refuse a setting out of its range (TRAIN_RANGES) or choices, whichever way it came
        (a flag, a config file, a checkpoint's saved settings), before anything is written."""
        check_ranges(self, TRAIN_RANGES, flag_name)
        if self.model not in MODEL_PRESETS:
            raise UserError(
                f"unknown model preset {self.model!r}; choose from {', '.join(MODEL_PRESETS)}"
            )
        if self.dtype not in DTYPES:
            raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.device != "auto" and self.device.split(":")[0] not in ("cuda", "mps", "cpu"):
            raise UserError(f"device must be auto, cuda, mps or cpu, got {self.device!r}")
        for name, choices in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)):
            if getattr(self, name) not in choices:
                raise UserError(
                    f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}"
                )
        check_shape(self)

    def shape_overrides(self) -> dict[str, int]:
        """The model-shape settings given (--n-layer, ...), as GPTConfig overrides."""
        values = {name: getattr(self, name) for name in SHAPE_FLAGS}
        return {name: value for name, value in values.items() if value is not None}

    @property
    def width(self) -> int:
        """The model's width: --n-embd, or the model preset's."""
        return self.n_embd or MODEL_PRESETS[self.model].n_embd

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a dict (keys with - or _), refusing unknown keys."""
        d = {k.replace("-", "_"): v for k, v in d.items()}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown TrainConfig keys: {', '.join(unknown)}")
        return cls(**checked_types(cls, d))


# The range of each numeric TrainConfig setting (every int and float field), in field order.
TRAIN_RANGES: dict[str, Range] = {
    "n_layer": AT_LEAST_1,
    "n_embd": AT_LEAST_1,
    "n_head": AT_LEAST_1,
    "n_kv_head": AT_LEAST_1,
    "ffn_size": AT_LEAST_1,
    "pad_vocab_multiple": AT_LEAST_1,
    "batch_size": Range(low=1, words=(AUTO_BATCH,)),
    "seq_len": AT_LEAST_1,
    "total_batch_size": AT_LEAST_1,
    "max_lr": POSITIVE,
    "min_lr_ratio": UNIT_INTERVAL,
    "warmup_steps": NON_NEGATIVE,
    "max_steps": AT_LEAST_1,
    "epochs": AT_LEAST_1,
    "weight_decay": NON_NEGATIVE,
    "beta1": BELOW_1,
    "beta2": BELOW_1,
    "eps": POSITIVE,  # 0 would divide 0 by 0 for a parameter whose gradients are all zero
    "decay_frac": Range(0, 1, low_open=True),
    "muon_lr": POSITIVE,
    "muon_momentum": BELOW_1,
    "muon_weight_decay": NON_NEGATIVE,
    "embed_lr": POSITIVE,
    "head_lr": POSITIVE,
    "base_width": AT_LEAST_1,
    "grad_clip": NON_NEGATIVE,
    "seed": SEED,
    "eval_every": AT_LEAST_1,
    "val_tokens": AT_LEAST_1,
    "hellaswag_limit": AT_LEAST_1,
    "samples": NON_NEGATIVE,
    "sample_tokens": NON_NEGATIVE,
    "sample_temperature": NON_NEGATIVE,  # 0: greedy
    "sample_top_k": NON_NEGATIVE,
    "sample_seed": SEED,
    "save_every": NON_NEGATIVE,
    "keep": AT_LEAST_1,
    "log_every": AT_LEAST_1,
    "peak_flops": POSITIVE,
}


def check_shape(cfg: TrainConfig) -> None:
    """Refuse a model shape that does not fit together, naming the flags (or the preset) each
    number came from: the width split into whole heads, query heads into whole key/value
    groups, an even head size for the modern family's rotary pairs, and no modern-only field on
    GPT-2 (whose shape is OpenAI's).

        >>> check_shape(TrainConfig(model="modern", n_embd=512, n_head=5))
        Traceback (most recent call last):
        gpt.cli.UserError: --n-embd 512 must be divisible by --n-head 5
    """
    preset = MODEL_PRESETS[cfg.model]

    def said(name: str) -> str:
        value = getattr(cfg, name, None)  # head_size is the preset's alone
        if value is None:
            return f"{name} {getattr(preset, name)} (from --model {cfg.model})"
        return f"{flag_name(name)} {value}"

    overrides = cfg.shape_overrides()
    modern_only = [flag_name(n) for n in ("n_kv_head", "ffn_size") if n in overrides]
    if preset.arch == "gpt2" and modern_only:
        raise UserError(
            f"{', '.join(modern_only)}: only for the modern family (--model {cfg.model} is "
            "GPT-2, whose MLP and heads are fixed)"
        )
    shape = {name: getattr(preset, name) for name in (*SHAPE_FLAGS, "head_size")} | overrides
    check_heads(shape, preset.arch, said)


def checked_types(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """`d` with each value checked against the field's type (ints accepted for floats), so that
    a config file's `max_lr = "fast"` is refused up front."""
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in d.items():
        allowed = typing.get_args(hints[key]) or (hints[key],)
        if value is None and type(None) in allowed:
            out[key] = value
        elif float in allowed and isinstance(value, int) and not isinstance(value, bool):
            out[key] = float(value)
        else:
            kinds = tuple(t for t in allowed if t is not type(None))
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise UserError(f"{key}: expected {_type_name(allowed)}, got {excerpt(value)}")
            out[key] = value
    return out


def _type_name(types: tuple[Any, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


SHAPE_FLAGS = ("n_layer", "n_embd", "n_head", "n_kv_head", "ffn_size")
"""The model-shape settings of TrainConfig: each overrides the model preset's field."""
DTYPES = ("auto", "bfloat16", "float32")
OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd")

# GPT-2's recipe on the CPU demo (gpt/demo.py): a 4,096-token tokeniser and the python-docs
# corpus. Many small steps learn fastest per CPU second; with 1,024-token batches the final
# validation loss after 800 steps was 5.48 at a peak rate of 2.5e-4, 5.24 at 5e-4, 5.19 at
# 1e-3 and 5.36 at 2e-3 (bench/recipes.py and its sweep). About 3.5 minutes on 2 cores,
# against a unigram entropy of 6.75 nats/token.
DEMO: dict[str, Any] = {
    "model": "demo",
    "data": "cache/demo/data",
    "tokeniser": "cache/demo/tokeniser.tkn",
    "out": "runs/demo",
    "pad_vocab_multiple": 64,
    "batch_size": 16,
    "seq_len": 64,
    "total_batch_size": 1024,
    "max_lr": 1e-3,
    "warmup_steps": 20,
    "max_steps": 800,
    "eval_every": 200,
    "val_tokens": 32_768,
    "save_every": 0,
    "keep": 1,
    "sample_prompt": "The",
    "samples": 2,
    "sample_tokens": 48,
    "sample_temperature": 0.8,
    "hellaswag_limit": 200,
    "log_every": 50,
}
# For tests: the tiny model, a few steps, no compile.
TINY: dict[str, Any] = {
    "model": "tiny",
    "out": "runs/tiny",
    "pad_vocab_multiple": 64,
    "batch_size": 4,
    "seq_len": 32,
    "total_batch_size": 128,
    "max_lr": 1e-2,
    "warmup_steps": 2,
    "max_steps": 10,
    "eval_every": 5,
    "val_tokens": 512,
    "save_every": 5,
    "samples": 1,
    "sample_tokens": 8,
    "compile": False,
    "device": "cpu",
    "hellaswag": "off",
    "progress": False,
}
# The modern recipe: Muon for the blocks' matrices, AdamW for the embedding, head and gains, a
# warm-up, a stable phase and a linear decay over the last 40% of the steps. The rates were tuned at
# demo scale (modern-demo's final validation loss after 800 steps, before the demo was cut to 640;
# README, "The modern recipe"): Muon 0.01 to 0.04 within 0.02 nats of each other; one AdamW rate for
# all its groups best at 3e-2 (1e-3: 4.20, 1e-2: 3.97, 3e-2: 3.93, 1e-1: 3.96); then the embedding
# at 1e-1 with the head and gains at 3e-2: 3.83. A cosine schedule instead measured the same
# (3.831). They are rates at width 256 (base_width): at another width the head's scales by 256 /
# width (gpt/train/recipe.py, `peak_rates`; bench/transfer.py measured it from 128 to 768 wide).
MODERN_RECIPE: dict[str, Any] = {
    "optimizer": "muon",
    "schedule": "wsd",
    "decay_frac": 0.4,
    "muon_lr": 0.02,
    "max_lr": 3e-2,
    "embed_lr": 1e-1,
    "head_lr": 3e-2,
    "weight_decay": 0.0,
    "base_width": 256,
}

# Recipes: overrides of TrainConfig's defaults (which are the `gpt2` recipe itself).
# Larger models follow GPT-3's table scaled like GPT-α's 124M recipe (3x GPT-3's learning rate):
# 350M 3e-4 -> 9e-4, 760M 2.5e-4 -> 7.5e-4, 1.3B 2e-4 -> 6e-4, GPT-3's 1M-token batch for xl
# (warm-up kept at 375M tokens), and micro-batches that fit an 80 GB card (xl: FSDP on 40 GB).
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": {},
    "gpt2-medium": {
        "model": "gpt2-medium",
        "out": "runs/gpt2-medium",
        "batch_size": 32,
        "max_lr": 9e-4,
    },
    "gpt2-large": {
        "model": "gpt2-large",
        "out": "runs/gpt2-large",
        "batch_size": 16,
        "max_lr": 7.5e-4,
    },
    "gpt2-xl": {
        "model": "gpt2-xl",
        "out": "runs/gpt2-xl",
        "batch_size": 8,
        "max_lr": 6e-4,
        "total_batch_size": 1_048_576,
        "warmup_steps": 358,
    },
    # The one-command CPU demo (gpt/demo.py; see DEMO).
    "demo": DEMO,
    # The modern recipe (gpt/model/qwen3.py, Muon + AdamW, warm-up/stable/decay) on GPT-2's data,
    # tokeniser and tokens per step, with HellaSwag in the loop as for gpt2.
    "modern": {**MODERN_RECIPE, "model": "modern", "out": "runs/modern"},
    # ... on the CPU demo's data, tokeniser and token budget (bench/recipes.py compares the two).
    # 640 steps, not the GPT-2 demo's 800: on a 2-core AVX2-only CPU (no native bfloat16, so
    # Newton-Schulz in float32) a step takes ~0.45 s and 800 of them alone took 361 s, over the
    # demo's 6-minute budget; it reaches the GPT-2 demo's final loss by step 125 either way.
    "modern-demo": {
        **DEMO,
        **MODERN_RECIPE,
        "model": "modern-demo",
        "out": "runs/modern-demo",
        "warmup_steps": 20,
        "max_steps": 640,
        "eval_every": 160,
    },
    "tiny": TINY,
    "modern-tiny": {**TINY, **MODERN_RECIPE, "model": "modern-tiny", "out": "runs/modern-tiny"},
}


# Settings a resumed run keeps from its checkpoint: they fix the data order and the model, and
# the optimizer the saved optimizer state belongs to. (The number of ranks is fixed too: each
# rank's loader position is saved; see gpt/train/loop.py.)
RESUME_FIXED = (
    "data",
    "model",
    *SHAPE_FLAGS,
    "pad_vocab_multiple",
    "batch_size",
    "seq_len",
    "total_batch_size",
    "seed",
    "optimizer",
)
# What each RESUME_FIXED setting (default: the data order) fixes, for the refusal's words.
FIXES = {
    "model": "the model",
    **dict.fromkeys(SHAPE_FLAGS, "the model"),
    "pad_vocab_multiple": "the model",
    "optimizer": "the optimizer state",
}
# Settings that only name where the run is and how to continue it: never reported as changes.
RESUME_LOCATION = ("out", "resume")


def same_setting(name: str, then: Any, now: Any) -> bool:
    """Whether two values of a TrainConfig field are the same setting (data folders compare as
    resolved paths, so `cache/x` and `./cache/x` are one folder)."""
    if name == "data" and isinstance(then, str) and isinstance(now, str):
        return Path(then).resolve() == Path(now).resolve()
    return then == now


def fixed_setting_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The RESUME_FIXED fields on which `now` differs from a checkpoint's `saved` settings.

    >>> fixed_setting_changes({"seed": 1, "max_lr": 0.1}, {"seed": 2, "max_lr": 0.2})
    ['seed']
    """
    return [
        name
        for name in RESUME_FIXED
        if name in now and not same_setting(name, saved.get(name), now[name])
    ]


def resumed_config(
    saved: dict[str, Any], stated: dict[str, Any], origins: dict[str, str], where: str
) -> tuple[TrainConfig, list[str]]:
    """The settings of a resumed run and one announcement per change.

    `saved` is the TrainConfig a checkpoint (`where`) was written with; it is the base. `stated`
    holds what the user stated explicitly now (flags, a config file), `origins` where each came
    from ("command line", "config file run.toml"). Stated RESUME_FIXED settings must equal the
    saved ones (UserError naming the setting); the others are laid over the saved ones, each
    change announced as `resume: max_lr 0.003 -> 0.001 (command line)`.
    """
    fixed = fixed_setting_changes(saved, stated)
    if fixed:
        name = fixed[0]
        raise UserError(
            f"{name} {stated[name]!r} ({origins[name]}): {where} was trained with "
            f"{name} {saved.get(name)!r}, and {name} fixes {FIXES.get(name, 'the data order')}, "
            "so a resumed run keeps it; leave it out, or start a new run with another --out"
        )
    changes = [
        f"resume: {name} {saved.get(name)!r} -> {value!r} ({origins[name]})"
        for name, value in stated.items()
        if name not in RESUME_LOCATION and not same_setting(name, saved.get(name), value)
    ]
    try:
        return TrainConfig.from_dict({**saved, **stated}), changes
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def train_preset(name: str, **overrides: Any) -> TrainConfig:
    """A named training recipe as a TrainConfig, with optional field overrides."""
    if name not in TRAIN_PRESETS:
        raise UserError(f"unknown preset {name!r}; choose from {', '.join(TRAIN_PRESETS)}")
    return TrainConfig.from_dict({**TRAIN_PRESETS[name], **overrides})
