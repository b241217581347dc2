"""Muon for the transformer blocks' matrices, AdamW for everything else, stepping as one optimizer
(--optimizer muon; gpt/train/recipe.py builds the plain AdamW of --optimizer adamw).

    python train.py --preset tiny --optimizer muon --schedule wsd

The parameters fall into four kinds, for any model with `model.blocks` (an nn.ModuleList of its
transformer blocks) and `model.lm_head`:

    matrices     ndim == 2 inside model.blocks          Muon (muon_lr, muon_momentum, Nesterov,
                                                        muon_weight_decay)
    embeddings   the weights of nn.Embedding modules    AdamW (embed_lr, weight_decay)
    head         model.lm_head.weight, unless it is     AdamW (head_lr, weight_decay)
                 an embedding's tensor (tied)
    gains        everything else (norm gains, biases)   AdamW (max_lr, no decay)

Every group is named and carries its peak learning rate (`peak_lr`: the flags' rates adjusted to
the model's width by the recipe's rule, gpt/train/recipe.py `peak_rates`): the schedule scales each
peak by the same factor at every step (recipe.set_lr). Muon orthogonalises a whole matrix at
every step (Newton-Schulz): with DDP every rank holds whole matrices; under FSDP2 it runs on the
sharded DTensors, whose products gather what they need, so each matrix is still orthogonalised
whole (tests/test_muon.py compares both with one process).

Newton-Schulz runs in the device's fast dtype (gpt/capability.py): bfloat16 on GPUs and on CPUs
that multiply it natively, as torch.optim.Muon always does, and float32 on CPUs that would
emulate it (an AVX2 laptop: 8.5 s a step of the modern demo in bfloat16, 0.43 s in float32).
Everything else is torch.optim.Muon's own (its groups, state, learning-rate adjustment).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

# torch.optim.Muon's learning-rate adjustment, reused so that only the Newton-Schulz dtype differs
from torch.optim._muon import _adjust_lr

from gpt.config import TrainConfig

MUON_GROUPS = ("matrices",)
ADAMW_GROUPS = ("embeddings", "head", "gains")


def classify_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The model's trainable parameters by kind (see the module docstring), each exactly once,
    in model.parameters() order within a kind."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    matrices = {id(p) for p in model.blocks.parameters() if p.ndim == 2}  # type: ignore[union-attr]
    head = id(model.lm_head.weight)  # type: ignore[union-attr]
    kinds: dict[str, list[nn.Parameter]] = {name: [] for name in MUON_GROUPS + ADAMW_GROUPS}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if id(p) in embeddings:
            kinds["embeddings"].append(p)
        elif id(p) == head:
            kinds["head"].append(p)
        elif id(p) in matrices:
            kinds["matrices"].append(p)
        else:
            kinds["gains"].append(p)
    return kinds


def group_settings(cfg: TrainConfig, peaks: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Each named group's settings: its peak learning rate (from `peaks`, by group name: the
    recipe's width rule, gpt/train/recipe.py) and its optimizer's hyperparameters."""
    adamw = {"betas": (cfg.beta1, cfg.beta2), "eps": cfg.eps}
    return {
        "matrices": {
            "peak_lr": peaks["matrices"],
            "momentum": cfg.muon_momentum,
            "weight_decay": cfg.muon_weight_decay,
        },
        "embeddings": {"peak_lr": peaks["embeddings"], "weight_decay": cfg.weight_decay, **adamw},
        "head": {"peak_lr": peaks["head"], "weight_decay": cfg.weight_decay, **adamw},
        "gains": {"peak_lr": peaks["gains"], "weight_decay": 0.0, **adamw},
    }


def newton_schulz(
    update: torch.Tensor,
    coefficients: tuple[float, float, float],
    steps: int,
    eps: float,
    dtype: torch.dtype,
) -> torch.Tensor:
    """torch.optim.Muon's orthogonalisation of a matrix (rows, cols) computed in `dtype`: the
    wide orientation, Frobenius normalisation, then X <- aX + (bA + cA^2)X with A = XX^T, `steps`
    times. In bfloat16 it is torch's _zeropower_via_newtonschulz op for op (a test checks the
    bits); the result stays in `dtype`, as torch's does."""
    a, b, c = coefficients
    x = update.to(dtype)
    tall = update.size(0) > update.size(1)
    if tall:
        x = x.T  # (cols, rows): the Gram matrix is the smaller side
    x = x / x.norm().clamp(min=eps)  # not in place: in float32, x may be the momentum buffer
    for _ in range(steps):
        gram = x @ x.T
        polynomial = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, polynomial, x, beta=a)
    return x.T if tall else x


class Muon(torch.optim.Muon):
    """torch.optim.Muon with Newton-Schulz in `ns_dtype` (torch's is always bfloat16); the same
    state, groups and update otherwise."""

    def __init__(self, params: Any, ns_dtype: torch.dtype, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: list[torch.Tensor] = []
            grads: list[torch.Tensor] = []
            buffers: list[torch.Tensor] = []
            self._init_group(group, params, grads, buffers)
            for param, grad, buffer in zip(params, grads, buffers, strict=True):
                self._update(group, param, grad, buffer)
        return loss

    def _update(
        self, group: dict[str, Any], param: torch.Tensor, grad: torch.Tensor, buffer: torch.Tensor
    ) -> None:
        """One matrix: momentum as an average (B <- lerp(B, g, 1 - mu)), Nesterov's look-ahead,
        Newton-Schulz, decoupled weight decay, the shape-adjusted step."""
        momentum, lr = group["momentum"], group["lr"]
        buffer.lerp_(grad, 1 - momentum)
        update = grad.lerp(buffer, momentum) if group["nesterov"] else buffer
        ortho = newton_schulz(
            update, group["ns_coefficients"], group["ns_steps"], group["eps"], self.ns_dtype
        )
        param.mul_(1 - lr * group["weight_decay"])
        param.add_(ortho, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], param.shape))


class MuonAdamW:
    """torch.optim.Muon and torch.optim.AdamW as one optimizer: one step, one zero_grad, all
    parameter groups (Muon's first), and one state_dict {"muon": ..., "adamw": ...}."""

    def __init__(self, muon: Muon, adamw: torch.optim.AdamW) -> None:
        self.muon = muon
        self.adamw = adamw

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [*self.muon.param_groups, *self.adamw.param_groups]

    def step(self) -> None:
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Both optimizers' states; KeyError or ValueError (torch's) when they do not fit."""
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])

    def apply_settings(self, cfg: TrainConfig, peaks: dict[str, float]) -> None:
        """The run's settings on every named group (a loaded state carries the saved ones)."""
        settings = group_settings(cfg, peaks)
        for group in self.param_groups:
            group.update(settings[group["name"]])


Optimizer = torch.optim.Optimizer | MuonAdamW
"""What the loop steps: a plain torch optimizer (AdamW) or MuonAdamW."""


def torch_optimizers(optimizer: Optimizer) -> list[torch.optim.Optimizer]:
    """The torch optimizers inside `optimizer` (for torch's distributed state-dict helpers)."""
    if isinstance(optimizer, MuonAdamW):
        return [optimizer.muon, optimizer.adamw]
    return [optimizer]


def muon_adamw(
    model: nn.Module,
    cfg: TrainConfig,
    peaks: dict[str, float],
    fused: bool,
    ns_dtype: torch.dtype,
) -> MuonAdamW:
    """Muon over the blocks' matrices (Nesterov, torch's default adjust_lr_fn: the update is
    scaled by sqrt(max(1, rows / cols)); Newton-Schulz in `ns_dtype`) and AdamW over the other
    kinds, each group at its peak rate in `peaks`; empty kinds (the head of a tied model) get
    no group."""
    kinds = classify_parameters(model)
    settings = group_settings(cfg, peaks)

    def groups(names: tuple[str, ...]) -> list[dict[str, Any]]:
        return [
            {"params": kinds[n], "name": n, "lr": settings[n]["peak_lr"], **settings[n]}
            for n in names
            if kinds[n]
        ]

    muon = Muon(groups(MUON_GROUPS), ns_dtype, lr=peaks["matrices"], nesterov=True)
    adamw = torch.optim.AdamW(
        groups(ADAMW_GROUPS),
        lr=cfg.max_lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        fused=fused or None,
    )
    return MuonAdamW(muon, adamw)
