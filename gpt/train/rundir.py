"""A run directory's checkpoints: RUN/checkpoints/step_XXXXXXX (XXXXXXX = optimizer steps done),
the `best` link to the one with the lowest validation loss, pruning, and where a run resumes
(what --resume names, checked against the run's settings).

RUN/checkpoints/best is a relative symlink (`best -> step_XXXXXXX`), so it stays valid wherever
the run directory is moved or mounted. Every path returned here has the form of the run
directory given (relative stays relative, a symlinked directory is not resolved).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from gpt import distributed
from gpt.checkpoint import is_checkpoint
from gpt.cli import UserError
from gpt.config import TrainConfig
from gpt.train.state import TrainingState, check_resumable, load_training_state

CHECKPOINTS_DIR = "checkpoints"
BEST_LINK = "best"
STEP_PREFIX = "step_"


def checkpoints_dir(run_dir: str | Path) -> Path:
    """RUN/checkpoints."""
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


def find_checkpoint(out: str | Path, resume: str) -> Path:
    """The checkpoint `--resume` names: the newest in the run directory `out` (latest), or a
    checkpoint directory."""
    if resume == "latest":
        path = latest_checkpoint(out)
        if path is None:
            raise UserError(f"--resume latest: no checkpoint in {checkpoints_dir(out)}")
        return path
    path = Path(resume)
    if not is_checkpoint(path):
        raise UserError(f"--resume {path}: not a checkpoint directory")
    return path


@dataclass(frozen=True)
class RunDirectory:
    """What rank 0 finds in the run directory, shared with every rank (nodes may see different
    files, and every rank must take the same path through the collectives)."""

    resume_from: Path | None
    """The checkpoint to resume from (None: a new run)."""
    holds_a_run: bool
    """Whether the directory already has checkpoints."""


def inspect_run_directory(cfg: TrainConfig) -> RunDirectory:
    """What --out holds and which checkpoint --resume names (decided on rank 0)."""
    resume_from = find_checkpoint(cfg.out, cfg.resume) if cfg.resume is not None else None
    return RunDirectory(resume_from, bool(list_checkpoints(cfg.out)))


def resume_point(
    cfg: TrainConfig, world_size: int
) -> tuple[Path, TrainingState] | tuple[None, None]:
    """The checkpoint a run resumes from and its training state, checked against `cfg`; (None,
    None) for a new run, which --out must not already hold. Decided on rank 0 for all ranks."""
    found = distributed.decide_on_rank0(lambda: inspect_run_directory(cfg))
    if found.resume_from is None:
        if found.holds_a_run:
            raise UserError(
                f"{Path(cfg.out)} already holds a run with checkpoints: continue it with --resume, "
                "or choose another --out"
            )
        return None, None
    state = load_training_state(found.resume_from)
    check_resumable(cfg, state, found.resume_from, world_size)
    return found.resume_from, state
