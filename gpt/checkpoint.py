"""Checkpoint directories: atomic save, validated load, resume.

A model directory holds:
    model.safetensors   the weights, our parameter names (padded vocabulary rows included)
    config.json         {"format": "gpt-alpha-checkpoint", "version": 1, "model": GPTConfig,
                         "tokeniser": spec, "tokeniser_fingerprint": str | None, ...}
    tokeniser.tkn       a copy of a custom tokeniser, so the directory is self-contained
A training checkpoint adds the optimizer, data loader and RNG states (see "training state"
below); `load_model_dir` reads either kind. Every directory is written atomically (a temp folder,
then one rename). Loading never unpickles arbitrary objects: weights come from safetensors,
everything else from JSON or torch.load(weights_only=True).
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gpt.cli import UserError
from gpt.config import GPTConfig
from gpt.data.loader import STATE_VERSION as LOADER_STATE_VERSION
from gpt.fsio import atomic_dir, write_json_atomic
from gpt.model.gpt2 import GPT

FORMAT_NAME = "gpt-alpha-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENISER_FILE = "tokeniser.tkn"


class CheckpointError(UserError):
    """A checkpoint directory is missing, damaged or of another format."""


def model_state_for_saving(model: GPT) -> dict[str, torch.Tensor]:
    """State dict without the tied lm_head alias, contiguous and on CPU (safetensors rejects
    shared storage)."""
    sd = model.state_dict()
    return {k: v.detach().cpu().contiguous() for k, v in sd.items() if k != "lm_head.weight"}


def is_checkpoint(path: str | Path) -> bool:
    """True when `path` is one of our model/checkpoint directories."""
    cfg = Path(path) / CONFIG_FILE
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("format") == FORMAT_NAME
    except (OSError, json.JSONDecodeError):
        return False


def write_model_files(
    out_dir: Path,
    state: dict[str, torch.Tensor],
    config: GPTConfig,
    tokeniser_spec: str | None = None,
    tokeniser_fingerprint: str | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write weights, config.json and a copy of a custom tokeniser into an existing folder."""
    save_file(state, str(out_dir / WEIGHTS_FILE))
    spec = tokeniser_spec
    if spec is not None and spec != "gpt2" and Path(spec).is_file():
        shutil.copyfile(spec, out_dir / TOKENISER_FILE)
        spec = TOKENISER_FILE
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "model": config.to_dict(),
        "tokeniser": spec,
        "tokeniser_fingerprint": tokeniser_fingerprint,
        **(extra or {}),
    }
    write_json_atomic(out_dir / CONFIG_FILE, meta)


def save_model_dir(
    model: GPT,
    out_dir: str | Path,
    tokeniser_spec: str | None = None,
    tokeniser_fingerprint: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save weights, config and tokeniser into `out_dir`, atomically (temp dir, then rename)."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        write_model_files(
            tmp,
            model_state_for_saving(model),
            model.config,
            tokeniser_spec,
            tokeniser_fingerprint,
            extra,
        )
    return out_dir


def read_meta(path: str | Path) -> dict[str, Any]:
    """The validated config.json of a checkpoint directory."""
    path = Path(path)
    cfg = path / CONFIG_FILE
    if not cfg.is_file():
        raise CheckpointError(f"{path}: not a GPT-α checkpoint (no {CONFIG_FILE})")
    try:
        meta = json.loads(cfg.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg}: damaged JSON ({e})") from None
    except OSError as e:
        raise CheckpointError(f"{cfg}: cannot read ({e.strerror})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{cfg}: damaged (not a JSON object)")
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{cfg}: not a GPT-α checkpoint (format {meta.get('format')!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{cfg}: checkpoint format version {meta.get('version')}, expected {FORMAT_VERSION}"
        )
    return meta


def resolve_tokeniser_spec(path: str | Path, meta: dict[str, Any]) -> str | None:
    """The tokeniser spec of a checkpoint, with a bundled .tkn resolved to its full path."""
    spec = meta.get("tokeniser")
    if spec is None or spec == "gpt2":
        return spec
    if not isinstance(spec, str):
        raise CheckpointError(f"{Path(path) / CONFIG_FILE}: damaged (tokeniser {spec!r})")
    return str(Path(path) / spec) if not Path(spec).is_absolute() else spec


def load_weights(model: GPT, path: str | Path) -> None:
    """Load a checkpoint directory's weights into `model` (same config), checking every key."""
    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{path}: missing {WEIGHTS_FILE}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:  # a damaged or truncated file
        raise CheckpointError(f"{weights}: damaged weights file ({e})") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # torch reports tensors whose shapes differ from the config's
        detail = str(e).strip().splitlines()[-1].strip()  # one "size mismatch for ..." line
        raise CheckpointError(f"{weights}: weights do not match {CONFIG_FILE} ({detail})") from None
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise CheckpointError(
            f"{weights}: weights do not match the config (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )


def _model_config(path: str | Path, meta: dict[str, Any]) -> GPTConfig:
    """The model shape recorded in a checkpoint's config.json (`meta`, from read_meta)."""
    try:
        return GPTConfig.from_dict(meta["model"])
    except (KeyError, TypeError, UserError) as e:  # absent, not an object, or bad values
        raise CheckpointError(f"{Path(path) / CONFIG_FILE}: bad model shape ({e})") from None


def load_model_dir(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[GPT, dict[str, Any]]:
    """Load a checkpoint directory's model (eval mode) and its metadata.

    The metadata's "tokeniser" is resolved to a spec that gpt.data.tokeniser.get_tokeniser accepts.
    """
    path = Path(path)
    meta = read_meta(path)
    model = GPT(_model_config(path, meta))
    load_weights(model, path)
    meta["tokeniser"] = resolve_tokeniser_spec(path, meta)
    return model.to(device).eval(), meta


# ----------------------------------------------------------------------------- training state
#
# A training checkpoint is a model directory plus:
#     optimizer.pt   the optimizer's state_dict (tensors and numbers; torch.save)
#     loader.json    {"version": 1, "ranks": [each rank's DataLoader.state_dict()]}
#     rng.pt         [each rank's RNG states: python, numpy, torch CPU, CUDA]
# and config.json's "training": step, tokens, best_val_loss, world_size, train_config.
# Checkpoints of a run live in RUN/checkpoints/step_XXXXXXX (XXXXXXX = optimizer steps done);
# RUN/checkpoints/best is a symlink to the one with the lowest validation loss.

OPTIMIZER_FILE = "optimizer.pt"
LOADER_FILE = "loader.json"
RNG_FILE = "rng.pt"
CHECKPOINTS_DIR = "checkpoints"
BEST_LINK = "best"
STEP_PREFIX = "step_"
LOADER_VERSION = 1


@dataclass
class TrainingState:
    """What a resumed run needs besides the weights."""

    step: int
    """Optimizer steps done."""
    tokens: int
    """Training tokens consumed."""
    best_val_loss: float | None
    """Lowest validation loss so far (None before the first evaluation)."""
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

    def summary(self) -> dict[str, Any]:
        """The JSON part, stored in config.json under "training"."""
        return {
            "step": self.step,
            "tokens": self.tokens,
            "best_val_loss": self.best_val_loss,
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
    try:
        return TrainingState(
            step=int(training["step"]),
            tokens=int(training["tokens"]),
            best_val_loss=training["best_val_loss"],
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
        raise CheckpointError(f"{file}: version {version!r}, this code reads {LOADER_VERSION}")
    ranks = loader.get("ranks")
    if not isinstance(ranks, list) or not all(_plausible_position(r) for r in ranks):
        raise CheckpointError(f"{file}: damaged loader positions")
    return ranks


def _plausible_position(state: Any) -> bool:
    """A loader state of this version whose epoch and position are integers in range."""
    if not isinstance(state, dict) or state.get("version") != LOADER_STATE_VERSION:
        return False
    numbers = [state.get(k) for k in ("epoch", "position", "tokens_in_split")]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
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


def saved_train_config(path: str | Path) -> dict[str, Any]:
    """The TrainConfig (as a dict) a training checkpoint was written with: the base settings of
    a run resumed from it."""
    training = read_meta(path).get("training")
    config = training.get("train_config") if isinstance(training, dict) else None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: a model directory, not a training checkpoint")
    return config


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


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def step_dir(run_dir: str | Path, step: int) -> Path:
    """RUN/checkpoints/step_XXXXXXX for a checkpoint taken after `step` optimizer steps."""
    return checkpoints_dir(run_dir) / f"{STEP_PREFIX}{step:07d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """A run's complete checkpoint directories, oldest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.name.startswith(STEP_PREFIX) and not p.is_symlink() and is_checkpoint(p)
    ]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint of a run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def best_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint that RUN/checkpoints/best points to, or None.

    The path is given in the same form as `run_dir` (relative stays relative, a symlinked run
    directory is not resolved), like every path `list_checkpoints` returns, so the two compare
    equal whatever form --out takes.
    """
    root = checkpoints_dir(run_dir)
    link = root / BEST_LINK
    if not link.is_symlink():
        return None
    target = Path(os.readlink(link))
    # Our links name a sibling folder; an absolute target (an older link) is kept as it is.
    path = target if target.is_absolute() else root / target
    return path if is_checkpoint(path) else None


def mark_best(run_dir: str | Path, path: Path) -> None:
    """Point RUN/checkpoints/best at `path`, a folder inside RUN/checkpoints: a relative symlink
    (`best -> step_XXXXXXX`, valid wherever the run directory is moved or mounted), replaced
    atomically."""
    root = checkpoints_dir(run_dir)
    tmp = root / f".{BEST_LINK}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path(path).name)
    os.replace(tmp, root / BEST_LINK)


def prune_checkpoints(run_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints and the best one; also leftovers of
    interrupted saves. Returns the deleted directories."""
    root = checkpoints_dir(run_dir)
    best = best_checkpoint(run_dir)
    best_id = best.resolve() if best is not None else None
    found = list_checkpoints(run_dir)
    doomed = [p for p in found[: max(len(found) - keep, 0)] if p.resolve() != best_id]
    for p in doomed:
        shutil.rmtree(p)
    for p in root.glob(f".{STEP_PREFIX}*"):
        shutil.rmtree(p, ignore_errors=True)
    return doomed
