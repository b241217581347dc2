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

Every group is named and carries its peak learning rate (`peak_lr`): the schedule scales each
peak by the same factor at every step (recipe.set_lr). torch.optim.Muon orthogonalises a whole
matrix at every step (Newton-Schulz, in bfloat16): with DDP every rank holds whole matrices; under
FSDP2 it runs on the sharded DTensors, whose products gather what they need, so each matrix is
still orthogonalised whole (tests/test_muon.py compares both with one process).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

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


def group_settings(cfg: TrainConfig) -> dict[str, dict[str, Any]]:
    """Each named group's settings: its peak learning rate and its optimizer's hyperparameters."""
    adamw = {"betas": (cfg.beta1, cfg.beta2), "eps": cfg.eps}
    return {
        "matrices": {
            "peak_lr": cfg.muon_lr,
            "momentum": cfg.muon_momentum,
            "weight_decay": cfg.muon_weight_decay,
        },
        "embeddings": {
            "peak_lr": cfg.max_lr if cfg.embed_lr is None else cfg.embed_lr,
            "weight_decay": cfg.weight_decay,
            **adamw,
        },
        "head": {
            "peak_lr": cfg.max_lr if cfg.head_lr is None else cfg.head_lr,
            "weight_decay": cfg.weight_decay,
            **adamw,
        },
        "gains": {"peak_lr": cfg.max_lr, "weight_decay": 0.0, **adamw},
    }


class MuonAdamW:
    """torch.optim.Muon and torch.optim.AdamW as one optimizer: one step, one zero_grad, all
    parameter groups (Muon's first), and one state_dict {"muon": ..., "adamw": ...}."""

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW) -> None:
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

    def apply_settings(self, cfg: TrainConfig) -> None:
        """The run's settings on every named group (a loaded state carries the saved ones)."""
        settings = group_settings(cfg)
        for group in self.param_groups:
            group.update(settings[group["name"]])


Optimizer = torch.optim.Optimizer | MuonAdamW
"""What the loop steps: a plain torch optimizer (AdamW) or MuonAdamW."""


def torch_optimizers(optimizer: Optimizer) -> list[torch.optim.Optimizer]:
    """The torch optimizers inside `optimizer` (for torch's distributed state-dict helpers)."""
    if isinstance(optimizer, MuonAdamW):
        return [optimizer.muon, optimizer.adamw]
    return [optimizer]


def muon_adamw(model: nn.Module, cfg: TrainConfig, fused: bool) -> MuonAdamW:
    """Muon over the blocks' matrices (Nesterov, torch's default adjust_lr_fn: the update is
    scaled by sqrt(max(1, rows / cols))) and AdamW over the other kinds; empty kinds (the head
    of a tied model) get no group."""
    kinds = classify_parameters(model)
    settings = group_settings(cfg)

    def groups(names: tuple[str, ...]) -> list[dict[str, Any]]:
        return [
            {"params": kinds[n], "name": n, "lr": settings[n]["peak_lr"], **settings[n]}
            for n in names
            if kinds[n]
        ]

    muon = torch.optim.Muon(groups(MUON_GROUPS), lr=cfg.muon_lr, nesterov=True)
    adamw = torch.optim.AdamW(
        groups(ADAMW_GROUPS),
        lr=cfg.max_lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        fused=fused or None,
    )
    return MuonAdamW(muon, adamw)
