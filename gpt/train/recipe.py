"""The recipe's arithmetic: gradient accumulation, run length, the learning-rate schedule and the
AdamW parameter groups. Pure functions of a TrainConfig (and the model, for the groups).

Each optimizer step reads total_batch_size tokens: `grad_accum_steps` micro-batches of
batch_size x seq_len tokens on each of world_size ranks. The learning rate warms up linearly over
warmup_steps, decays along a cosine to min_lr_ratio * max_lr at max_steps, and stays flat after.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn

from gpt.cli import UserError
from gpt.config import TrainConfig


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


def lr_at(step: int, cfg: TrainConfig, max_steps: int) -> float:
    """Linear warm-up over warmup_steps, cosine decay to min_lr_ratio * max_lr at max_steps,
    flat after.

    With max_lr 1, min_lr_ratio 0.1, 10 warm-up steps and 110 steps: step 0 takes 1/10 of the
    peak, step 9 the peak, step 60 (half-way through the decay) 0.1 + 0.9 / 2, step 110 and
    later the floor:

        >>> cfg = TrainConfig(max_lr=1.0, min_lr_ratio=0.1, warmup_steps=10)
        >>> [round(lr_at(s, cfg, 110), 4) for s in (0, 9, 60, 110, 500)]
        [0.1, 1.0, 0.55, 0.1, 0.1]
    """
    min_lr = cfg.max_lr * cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return cfg.max_lr * (step + 1) / cfg.warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.max_lr - min_lr)


def configure_optimizer(
    model: nn.Module, cfg: TrainConfig, device: torch.device, fused: bool | None = None
) -> torch.optim.AdamW:
    """AdamW with weight decay on >= 2-D parameters only (matmul weights, embeddings); fused
    kernels where this PyTorch has them for the device (unless `fused` says otherwise)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    if fused is None:
        fused = "fused" in inspect.signature(torch.optim.AdamW).parameters and device.type in (
            "cuda",
            "cpu",
        )
    return torch.optim.AdamW(
        groups, lr=cfg.max_lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused or None
    )


def apply_optimizer_settings(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> None:
    """Put the run's AdamW settings on the parameter groups. A loaded optimizer state carries
    the betas, eps and weight decay it was saved with; a resumed run uses its own settings (the
    learning rate is set at every step). The groups are configure_optimizer's: decayed, then not.
    """
    for group, weight_decay in zip(optimizer.param_groups, (cfg.weight_decay, 0.0), strict=True):
        group["betas"] = (cfg.beta1, cfg.beta2)
        group["eps"] = cfg.eps
        group["weight_decay"] = weight_decay


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The learning rate of every parameter group (the schedule sets it before each step)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
