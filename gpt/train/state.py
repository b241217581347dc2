"""The training state a checkpoint holds besides the weights, and the components that own it.

A training checkpoint (RUN/checkpoints/step_XXXXXXX, see gpt/train/rundir.py) is a model
directory (gpt/checkpoint.py) plus:
    optimizer.pt   the optimizer's state_dict (tensors and numbers; torch.save)
    loader.json    {"version": 1, "ranks": [each rank's DataLoader.state_dict()]}
    rng.pt         [each rank's RNG states: python, numpy, torch CPU, CUDA]
and config.json's "training": step, tokens, best_val_loss, best_step (`Progress.state_dict()`),
world_size, train_config. The loop assembles a `TrainingState` from its components'
state_dict()s (Progress, the loader, the optimizer through gpt/train/parallel.py,
`capture_rng_state`) and hands each its part back on resume. Loading checks every file, so that
a damaged one fails at once, naming it (CheckpointError), not in the resumed run; nothing is
unpickled beyond tensors and plain types (torch.load(weights_only=True)).
"""

from __future__ import annotations

import json
import pickle
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpt.checkpoint import CONFIG_FILE, CheckpointError, read_meta, write_model_files
from gpt.cli import UserError, excerpt
from gpt.config import GPTConfig, TrainConfig, fixed_setting_changes
from gpt.data.loader import STATE_VERSION as LOADER_STATE_VERSION
from gpt.fsio import atomic_dir, write_json_atomic

OPTIMIZER_FILE = "optimizer.pt"
LOADER_FILE = "loader.json"
RNG_FILE = "rng.pt"
LOADER_VERSION = 1


@dataclass
class Progress:
    """Where the run stands. `state_dict()` is what a checkpoint records of it; the paths are
    this process's knowledge of the run directory (found again there on resume)."""

    step: int = 0
    """Optimizer steps done."""
    tokens: int = 0
    """Training tokens consumed."""
    best_val_loss: float | None = None
    """Lowest validation loss so far (None before the first evaluation)."""
    best_step: int | None = None
    """The step of the checkpoint saved at that loss (rewinding points `best` back at it)."""
    last_val_loss: float | None = None
    """The latest validation loss (not saved: a resumed run has none until it evaluates)."""
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    """The checkpoint with the lowest validation loss, as saved by this run or its checkpoint."""

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens": self.tokens,
            "best_val_loss": self.best_val_loss,
            "best_step": self.best_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.tokens = state["tokens"]
        self.best_val_loss = state["best_val_loss"]
        self.best_step = state["best_step"]


@dataclass
class TrainingState:
    """What a resumed run needs besides the weights."""

    step: int
    tokens: int
    best_val_loss: float | None
    """step, tokens, best_val_loss (and best_step, below): the run's Progress (see there)."""
    world_size: int
    """Number of ranks that wrote the checkpoint."""
    train_config: dict[str, Any]
    """The run's resolved TrainConfig."""
    optimizer: dict[str, Any] = field(default_factory=dict)
    """The optimizer's state_dict (the full, unsharded one under FSDP)."""
    loader: list[dict[str, Any]] = field(default_factory=list)
    """Each rank's training DataLoader state."""
    rng: list[dict[str, Any]] = field(default_factory=list)
    """Each rank's RNG states (see capture_rng_state)."""
    best_step: int | None = None
    """Progress.best_step (None in checkpoints written before it was recorded)."""

    def progress(self) -> dict[str, Any]:
        """The Progress.state_dict() this state was assembled from."""
        return {
            "step": self.step,
            "tokens": self.tokens,
            "best_val_loss": self.best_val_loss,
            "best_step": self.best_step,
        }

    def summary(self) -> dict[str, Any]:
        """The JSON part, stored in config.json under "training"."""
        return {
            **self.progress(),
            "world_size": self.world_size,
            "train_config": self.train_config,
        }


def save_checkpoint(
    out_dir: str | Path,
    model_state: dict[str, torch.Tensor],
    config: GPTConfig,
    state: TrainingState,
    tokeniser_spec: str | None,
    tokeniser_fingerprint: str | None,
) -> Path:
    """Write a training checkpoint directory atomically (everything or nothing)."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        write_model_files(
            tmp,
            model_state,
            config,
            tokeniser_spec,
            tokeniser_fingerprint,
            extra={"training": state.summary()},
        )
        torch.save(state.optimizer, tmp / OPTIMIZER_FILE)
        torch.save(state.rng, tmp / RNG_FILE)
        write_json_atomic(tmp / LOADER_FILE, {"version": LOADER_VERSION, "ranks": state.loader})
    return out_dir


def load_training_state(path: str | Path) -> TrainingState:
    """The training state of a checkpoint directory (weights are loaded by `load_weights`)."""
    path = Path(path)
    meta = read_meta(path)
    training = meta.get("training")
    if not isinstance(training, dict):
        raise CheckpointError(f"{path}: a model directory, not a training checkpoint")
    for name in (OPTIMIZER_FILE, RNG_FILE, LOADER_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: missing {name}")
    optimizer = _read_torch_file(path / OPTIMIZER_FILE)
    rng = _checked_rng_states(path / RNG_FILE, _read_torch_file(path / RNG_FILE))
    loader = _read_loader_states(path / LOADER_FILE)
    best_step = training.get("best_step")  # absent from checkpoints written before it was saved
    if best_step is not None and not _count(best_step):
        raise CheckpointError(f"{path / CONFIG_FILE}: damaged best_step {excerpt(best_step)}")
    try:
        return TrainingState(
            step=int(training["step"]),
            tokens=int(training["tokens"]),
            best_val_loss=training["best_val_loss"],
            best_step=best_step,
            world_size=int(training["world_size"]),
            train_config=dict(training["train_config"]),
            optimizer=optimizer,
            loader=loader,
            rng=rng,
        )
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path / CONFIG_FILE}: incomplete training state ({e})") from None


# What torch.load(weights_only=True) raises on a damaged zip archive or pickle (ValueError also
# covers a record that is not a number and bytes that are not UTF-8).
DAMAGED_TORCH_FILE = (
    RuntimeError,
    EOFError,
    OSError,
    ValueError,
    KeyError,
    IndexError,
    pickle.UnpicklingError,
)
# What random, numpy and torch raise when asked to restore a damaged RNG state.
DAMAGED_RNG_STATE = (
    KeyError,
    TypeError,
    ValueError,
    OverflowError,
    IndexError,
    AttributeError,
    RuntimeError,
)


def _read_torch_file(file: Path) -> Any:
    """A torch.save file of tensors and plain types (weights_only), or CheckpointError naming it."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except DAMAGED_TORCH_FILE as e:
        raise CheckpointError(f"{file}: damaged training state ({e})") from None


def _read_loader_states(file: Path) -> list[dict[str, Any]]:
    """Each rank's DataLoader state from loader.json, checked as far as the file alone allows
    (the loader itself then checks that it reads the same data)."""
    try:
        loader = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise CheckpointError(f"{file}: damaged training state ({e})") from None
    if not isinstance(loader, dict) or loader.get("version") != LOADER_VERSION:
        version = loader.get("version") if isinstance(loader, dict) else None
        raise CheckpointError(
            f"{file}: version {excerpt(version)}, this code reads {LOADER_VERSION}"
        )
    ranks = loader.get("ranks")
    if not isinstance(ranks, list) or not all(_plausible_position(r) for r in ranks):
        raise CheckpointError(f"{file}: damaged loader positions")
    return ranks


def _plausible_position(state: Any) -> bool:
    """A loader state of this version whose epoch and position are integers in range."""
    if not isinstance(state, dict) or state.get("version") != LOADER_STATE_VERSION:
        return False
    numbers = [state.get(k) for k in ("epoch", "position", "tokens_in_split")]
    if not all(_count(n) for n in numbers):
        return False
    return state["position"] <= state["tokens_in_split"]


def _checked_rng_states(file: Path, states: Any) -> list[dict[str, Any]]:
    """Each rank's RNG states from rng.pt, tried: each is restored in turn and this process's own
    states put back after, so that a damaged file fails here, naming it, not in the resumed run.
    (CUDA states are not tried: they need the device.)"""
    if not isinstance(states, list):
        raise CheckpointError(f"{file}: damaged RNG state (not a list per rank)")
    own = capture_rng_state()
    try:
        for state in states:
            restore_rng_state(state)
    except DAMAGED_RNG_STATE as e:
        raise CheckpointError(f"{file}: damaged RNG state ({type(e).__name__}: {e})") from None
    finally:
        restore_rng_state(own)
    return states


def check_world_size(state: TrainingState, path: Path, world_size: int) -> None:
    """A run resumes on as many ranks as wrote its checkpoint: each rank's data position is
    saved."""
    if state.world_size != world_size:
        raise UserError(
            f"{path} was written by {state.world_size} ranks; resume it with the same number "
            f"(now {world_size}) so that every rank's data position is restored"
        )


def check_fixed_settings(cfg: TrainConfig, saved: dict[str, Any], path: Path) -> None:
    """A complete TrainConfig (train() called from code) resumes only with the data order and
    model of its checkpoint `path`, whose settings are `saved`. (train.py checks only what the
    user stated, in config.resumed_config, naming where each came from.)"""
    changed = fixed_setting_changes(saved, cfg.to_dict())
    if changed:
        name = changed[0]
        then, now = saved[name], getattr(cfg, name)
        raise UserError(f"{path}: checkpoint has {name}={excerpt(then)}, this run {name}={now!r}")


def saved_settings(path: str | Path) -> tuple[dict[str, Any], int]:
    """The TrainConfig (as a dict) a training checkpoint was written with, the base settings of
    a run resumed from it, and its step: what a resume is planned from, read from config.json
    alone (the optimizer state may be gigabytes)."""
    training = read_meta(path).get("training")
    config = training.get("train_config") if isinstance(training, dict) else None
    step = training.get("step") if isinstance(training, dict) else None
    if not isinstance(config, dict) or not _count(step):
        raise CheckpointError(f"{path}: a model directory, not a training checkpoint")
    return with_defaults(config), step


def _count(value: Any) -> bool:
    """Whether `value` is an int >= 0 (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's TrainConfig with the fields it predates at their defaults: a checkpoint
    written before `optimizer` existed was trained with the default, AdamW."""
    return {**TrainConfig().to_dict(), **saved}


def capture_rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """This process's RNG states in types that torch.load(weights_only=True) accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": None,
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Undo `capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if device is not None and device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
