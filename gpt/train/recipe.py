"""The recipe's arithmetic: gradient accumulation, run length, the learning-rate schedule and the
AdamW parameter groups. Pure functions of a TrainConfig (and the model, for the groups).

Each optimizer step reads total_batch_size tokens: `grad_accum_steps` micro-batches of
batch_size x seq_len tokens on each of world_size ranks. The learning rate warms up linearly over
warmup_steps, then either decays along a cosine to min_lr_ratio x its peak at max_steps (cosine)
or stays at the peak and decays linearly over the last decay_frac of the run (wsd); it stays flat
after max_steps. Every parameter group follows the schedule from its own peak: max_lr for AdamW's
groups, muon_lr etc. for --optimizer muon (gpt/train/optimizers.py), adjusted to the model's width
by the rule below (`peak_rates`).

The width rule of --optimizer muon (rates stated at --base-width, used at any width)
-------------------------------------------------------------------------------------
The modern recipe's rates were tuned 256 wide; the `modern` preset is 768 wide. Which rates may
stay and which must move follows from how much one step changes a layer's output at width n, in
the spirit of muP (Yang & Hu, "Tensor Programs V", 2022, table 3 for Adam) and of the spectral
condition (Yang, Simon & Bernstein, "A spectral condition for feature learning", 2023): a rate
transfers when the change it makes to each coordinate of the layer's output does not grow or
shrink with n. The blocks read the residual stream through RMSNorm, so their inputs have entries
of size one whatever n.

- matrices (Muon): the update is orthogonalised, so its spectral norm is lr (times torch's
  sqrt(max(1, rows/cols)), Keller Jordan's factor, which depends on the aspect ratio alone and
  every block matrix keeps its aspect ratio as the model widens). A matrix of spectral norm lr
  moves an input of entries ~1 by entries ~lr: width-free. Rate kept.
- embeddings (AdamW): Adam moves each entry of the looked-up row by ~lr; the row is the
  residual stream's entries themselves. Width-free (muP's input weights). Rate kept.
- gains (AdamW, the norms' weights): each scales one coordinate, moved by ~lr. Rate kept.
- head (AdamW): a logit sums n products of the final normalised state (entries ~1) with the
  head's row. Adam's step is aligned with that state (the gradient is an outer product with it),
  so the n terms add up coherently: a logit moves by ~lr x n. Rate x base_width / n (muP's output
  weights; the head starts at zero, so no initial scale needs the matching 1/n).

So one rule, `head rate x base_width / width`, and the preset's numbers are rates at base_width.
nanochat scales its AdamW rates (embedding and head) by (width/768)^-0.5 instead; the sweep of
bench/transfer.py (BENCHMARKS.md, "Rates across widths") measured which holds here.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn

from gpt.capability import fast_dtype
from gpt.cli import UserError
from gpt.config import TrainConfig
from gpt.train.optimizers import MuonAdamW, Optimizer, muon_adamw


def grad_accum_steps(cfg: TrainConfig, world_size: int) -> int:
    """Micro-steps per optimizer step; total_batch_size must split exactly over the ranks.

    GPT-α's recipe (64 x 1024 tokens per micro-batch, 524,288 per step) on one GPU and on eight:

        >>> cfg = TrainConfig(batch_size=64, seq_len=1024, total_batch_size=524288)
        >>> grad_accum_steps(cfg, 1), grad_accum_steps(cfg, 8)
        (8, 1)
    """
    per_micro = cfg.batch_size * cfg.seq_len * world_size
    if cfg.total_batch_size % per_micro:
        raise UserError(
            f"total_batch_size {cfg.total_batch_size} is not a multiple of batch_size * seq_len * "
            f"world_size = {cfg.batch_size} * {cfg.seq_len} * {world_size} = {per_micro}"
        )
    return cfg.total_batch_size // per_micro


def micro_batch_sizes(cfg: TrainConfig, world_size: int) -> list[int]:
    """The micro-batch sizes (sequences per rank) that split total_batch_size exactly over the
    ranks, smallest first: the divisors of the rows each rank reads per optimizer step (the
    candidates of --batch-size auto, gpt/train/batch.py).

    GPT-α's 524,288 tokens of 1,024 on eight GPUs: 64 rows per rank; 12 rows on one:

        >>> micro_batch_sizes(TrainConfig(seq_len=1024, total_batch_size=524288), 8)
        [1, 2, 4, 8, 16, 32, 64]
        >>> micro_batch_sizes(TrainConfig(seq_len=1024, total_batch_size=12 * 1024), 1)
        [1, 2, 3, 4, 6, 12]
    """
    per_row = cfg.seq_len * world_size
    if cfg.total_batch_size % per_row:
        raise UserError(
            f"total_batch_size {cfg.total_batch_size} is not a multiple of seq_len * world_size "
            f"= {cfg.seq_len} * {world_size} = {per_row}, so no micro-batch size splits it"
        )
    rows = cfg.total_batch_size // per_row
    return [size for size in range(1, rows + 1) if rows % size == 0]


def default_max_steps(cfg: TrainConfig, train_tokens: int) -> int:
    """`epochs` passes over the training split, in whole optimizer steps.

    >>> default_max_steps(TrainConfig(total_batch_size=524288, epochs=1), 10_000_000_000)
    19073
    """
    steps = train_tokens * cfg.epochs // cfg.total_batch_size
    if steps < 1:
        raise UserError(
            f"{cfg.data}: the training split ({train_tokens:,} tokens) is smaller than one "
            f"optimizer step ({cfg.total_batch_size:,} tokens); lower --total-batch-size"
        )
    return steps


def lr_at(step: int, cfg: TrainConfig, max_steps: int, peak: float | None = None) -> float:
    """The learning rate at `step` of a group whose peak is `peak` (default max_lr): linear
    warm-up over warmup_steps, then cfg.schedule (cosine here, wsd in `wsd_lr`), flat after
    max_steps at min_lr_ratio x peak. It is peak x a factor in (0, 1] that depends on the step
    alone (computed from the peak, so that the default path is today's arithmetic, bit for bit).

    Cosine with max_lr 1, min_lr_ratio 0.1, 10 warm-up steps and 110 steps: step 0 takes 1/10 of
    the peak, step 9 the peak, step 60 (half-way through the decay) 0.1 + 0.9 / 2, step 110 and
    later the floor; a group with peak 0.02 takes 0.02 x the same factors:

        >>> cfg = TrainConfig(max_lr=1.0, min_lr_ratio=0.1, warmup_steps=10)
        >>> [round(lr_at(s, cfg, 110), 4) for s in (0, 9, 60, 110, 500)]
        [0.1, 1.0, 0.55, 0.1, 0.1]
        >>> [round(lr_at(s, cfg, 110, peak=0.02), 4) for s in (0, 9, 60, 110, 500)]
        [0.002, 0.02, 0.011, 0.002, 0.002]
    """
    peak = cfg.max_lr if peak is None else peak
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "wsd":
        return wsd_lr(step, cfg, max_steps, peak)
    min_lr = peak * cfg.min_lr_ratio
    if step >= max_steps:
        return min_lr
    progress = (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - min_lr)


def wsd_lr(step: int, cfg: TrainConfig, max_steps: int, peak: float) -> float:
    """Warm-up/stable/decay after the warm-up: `peak` until the last round(decay_frac x
    max_steps) steps (at least one), then a straight line to min_lr_ratio x peak at max_steps,
    flat after.

    With min_lr_ratio 0.1, 10 warm-up steps, 110 steps and decay_frac 0.2, the decay takes the
    last 22 steps (88..110): step 50 and step 88 are at the peak, step 99 (half-way) at
    0.1 + 0.9 / 2, step 110 and later at the floor:

        >>> cfg = TrainConfig(max_lr=1.0, min_lr_ratio=0.1, warmup_steps=10, schedule="wsd")
        >>> [round(lr_at(s, cfg, 110), 4) for s in (0, 9, 50, 88, 99, 109, 110, 500)]
        [0.1, 1.0, 1.0, 1.0, 0.55, 0.1409, 0.1, 0.1]
    """
    min_lr = peak * cfg.min_lr_ratio
    decay_steps = max(1, round(cfg.decay_frac * max_steps))
    left = max_steps - step
    if left >= decay_steps:
        return peak
    if left <= 0:
        return min_lr
    return min_lr + (peak - min_lr) * left / decay_steps


def peak_rates(cfg: TrainConfig) -> dict[str, float]:
    """The peak rate of each named group of --optimizer muon (gpt/train/optimizers.py) at the
    model's width: the flags' rates (embed_lr and head_lr default to max_lr), with the head's
    scaled by base_width / width when base_width is set (the rule in the module docstring).

    The modern recipe's rates, stated at width 256, for the 768-wide `modern` preset: the head's
    3e-2 becomes 1e-2, the rest stay:

        >>> cfg = TrainConfig(model="modern", optimizer="muon", muon_lr=0.02, max_lr=3e-2,
        ...                   embed_lr=0.1, head_lr=3e-2, base_width=256)
        >>> {name: round(rate, 6) for name, rate in peak_rates(cfg).items()}
        {'matrices': 0.02, 'embeddings': 0.1, 'head': 0.01, 'gains': 0.03}

    Half the base width doubles it; without base_width the rates are used as given:

        >>> import dataclasses
        >>> peak_rates(dataclasses.replace(cfg, n_embd=128, n_head=2))["head"]
        0.06
        >>> peak_rates(dataclasses.replace(cfg, base_width=None))["head"]
        0.03
    """
    head = cfg.max_lr if cfg.head_lr is None else cfg.head_lr
    if cfg.base_width is not None:
        head *= cfg.base_width / cfg.width
    return {
        "matrices": cfg.muon_lr,
        "embeddings": cfg.max_lr if cfg.embed_lr is None else cfg.embed_lr,
        "head": head,
        "gains": cfg.max_lr,
    }


def rates_line(cfg: TrainConfig) -> str:
    """The header's line of each group's effective peak rate, e.g. "rates at width 768 (stated
    at 256): matrices 0.02 (Muon), embeddings 0.1, head 0.01 (x 256/768), gains 0.03"."""
    stated = "" if cfg.base_width is None else f" (stated at {cfg.base_width})"
    parts = []
    for name, rate in peak_rates(cfg).items():
        note = " (Muon)" if name == "matrices" else ""
        if name == "head" and cfg.base_width not in (None, cfg.width):
            note = f" (x {cfg.base_width}/{cfg.width})"
        parts.append(f"{name} {rate:.3g}{note}")
    return f"rates at width {cfg.width}{stated}: {', '.join(parts)}"


def configure_optimizer(
    model: nn.Module, cfg: TrainConfig, device: torch.device, fused: bool | None = None
) -> Optimizer:
    """The run's optimizer (cfg.optimizer): AdamW over every parameter (`adamw_optimizer`), or
    Muon for the blocks' matrices and AdamW for the rest (gpt/train/optimizers.py). Fused AdamW
    kernels where this PyTorch has them for the device, unless `fused` says otherwise; Muon's
    Newton-Schulz in the device's fast dtype (gpt/capability.py)."""
    if fused is None:
        fused = "fused" in inspect.signature(torch.optim.AdamW).parameters and device.type in (
            "cuda",
            "cpu",
        )
    if cfg.optimizer == "muon":
        return muon_adamw(model, cfg, peak_rates(cfg), fused, fast_dtype(device))
    return adamw_optimizer(model, cfg, fused)


def adamw_optimizer(model: nn.Module, cfg: TrainConfig, fused: bool) -> torch.optim.AdamW:
    """AdamW with weight decay on >= 2-D parameters only (matmul weights, embeddings)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=cfg.max_lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused or None
    )


def apply_optimizer_settings(optimizer: Optimizer, cfg: TrainConfig) -> None:
    """Put the run's settings on the parameter groups. A loaded optimizer state carries the
    betas, eps, weight decay (and Muon's peaks and momentum) it was saved with; a resumed run
    uses its own settings (the learning rate is set at every step). A plain AdamW's groups are
    `adamw_optimizer`'s: decayed, then not; MuonAdamW's are named (see there)."""
    if isinstance(optimizer, MuonAdamW):
        optimizer.apply_settings(cfg, peak_rates(cfg))
        return
    for group, weight_decay in zip(optimizer.param_groups, (cfg.weight_decay, 0.0), strict=True):
        group["betas"] = (cfg.beta1, cfg.beta2)
        group["eps"] = cfg.eps
        group["weight_decay"] = weight_decay


def set_lr(optimizer: Optimizer, step: int, cfg: TrainConfig, max_steps: int) -> None:
    """Each parameter group's learning rate at `step`, from its own peak (`peak_lr`, which
    MuonAdamW's groups carry; max_lr for a plain AdamW's)."""
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, cfg, max_steps, group.get("peak_lr"))
