"""A run directory: its checkpoints (RUN/checkpoints/step_XXXXXXX, XXXXXXX = optimizer steps
done), the `best` link, pruning, and the plan of how a run starts.

RUN/checkpoints/best is a relative symlink (`best -> step_XXXXXXX`), so it stays valid wherever
the run directory is moved or mounted. Every path returned here has the form of the run
directory given (relative stays relative, a symlinked directory is not resolved).

The plan (`RunPlan`) says, once, how a run starts: new, or resumed from which checkpoint, with
which settings (and their announced changes), in which directory, leaving which later
checkpoints behind. train.py makes it from what the user stated (`plan_resume`), code that calls
train() from a complete TrainConfig (`plan_run`); every rank follows rank 0's, and rank 0 alone
holds the run directory's lock (gpt/lock.py) for the run's life (`claimed`), checking under
it that the directory is as the plan found it (`check_unchanged`).

What a checkpoint decides: the settings a run resumes with (those that fix the data order and
the model may not change). What it never decides: where the run writes. A resumed run writes
into its checkpoint's own run directory (RUN for RUN/checkpoints/step_X), whatever `out` the
checkpoint recorded; a checkpoint kept elsewhere needs --out.

Rewinding: resuming from a checkpoint older than the newest (the standard recovery from a loss
spike) abandons the later ones. When the run starts they are moved into
RUN/checkpoints/abandoned-<time>/ (never deleted; one line says so), `best` points back at the
kept branch's best, and the logs are cut back to the checkpoint (`start_from`): a later bare
--resume continues the new branch, and pruning counts only its checkpoints.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gpt import distributed, lock
from gpt.checkpoint import is_checkpoint
from gpt.cli import UserError
from gpt.config import TrainConfig, resumed_config
from gpt.fsio import recover_dir, replace_durably
from gpt.train.logs import truncate_logs
from gpt.train.state import TrainingState, check_fixed_settings, saved_settings

CHECKPOINTS_DIR = "checkpoints"
BEST_LINK = "best"
STEP_PREFIX = "step_"
STEP_NAME = re.compile(rf"{STEP_PREFIX}([0-9]+)")
ABANDONED_PREFIX = "abandoned-"


def checkpoints_dir(run_dir: str | Path) -> Path:
    """RUN/checkpoints."""
    return Path(run_dir) / CHECKPOINTS_DIR


def step_dir(run_dir: str | Path, step: int) -> Path:
    """RUN/checkpoints/step_XXXXXXX for a checkpoint taken after `step` optimizer steps."""
    return checkpoints_dir(run_dir) / f"{STEP_PREFIX}{step:07d}"


def checkpoint_step(path: Path) -> int:
    """The step in a checkpoint folder's name (step_0000040 -> 40); -1 for another name."""
    match = STEP_NAME.fullmatch(path.name)
    return int(match.group(1)) if match else -1


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """A run's complete checkpoint directories, oldest first (those set aside by a rewind are not
    the run's any more)."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if checkpoint_step(p) >= 0 and not p.is_symlink() and is_checkpoint(p)
    ]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint of a run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def later_checkpoints(run_dir: str | Path, step: int) -> tuple[Path, ...]:
    """The run's checkpoints after `step`, oldest first."""
    return tuple(p for p in list_checkpoints(run_dir) if checkpoint_step(p) > step)


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
    replace_durably(tmp, root / BEST_LINK)


def prune_checkpoints(run_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints and the best one; settle leftovers of
    interrupted saves (fsio.recover_dir: a replaced checkpoint caught between two renames is
    put back, temp folders go). Returns the deleted directories."""
    root = checkpoints_dir(run_dir)
    best = best_checkpoint(run_dir)
    best_id = best.resolve() if best is not None else None
    found = list_checkpoints(run_dir)
    doomed = [p for p in found[: max(len(found) - keep, 0)] if p.resolve() != best_id]
    for p in doomed:
        shutil.rmtree(p)
    for leftover in root.glob(f".{STEP_PREFIX}*"):  # .step_X.tmp-..., .step_X.old
        recover_dir(root / leftover.name[1:].split(".")[0])  # an old one put back, not lost
    for stray in root.glob(f".{STEP_PREFIX}*"):  # what recover_dir left: older temp names
        shutil.rmtree(stray, ignore_errors=True)
    return doomed


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class RunPlan:
    """How a run starts (see the module doc)."""

    cfg: TrainConfig
    """The run's settings; `cfg.out` is the run directory."""
    checkpoint: Path | None = None
    """The checkpoint to resume from; None: a new run, in a directory that holds none."""
    step: int = 0
    """The checkpoint's step (0 for a new run)."""
    changes: tuple[str, ...] = ()
    """One line per setting changed from the checkpoint's: `resume: max_lr 0.003 -> 0.001
    (command line)`."""
    abandoned: tuple[Path, ...] = ()
    """The run's checkpoints after `checkpoint`: the branch left by rewinding to it."""

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.out)


def plan_resume(stated: dict[str, Any], origins: dict[str, str], default_out: str) -> RunPlan:
    """The plan of `train.py --resume`. `stated`: the settings the user stated now (flags, a
    config file; `resume` among them); `origins`: where each came from; `default_out`: the
    preset's run directory, for --resume latest without --out. The checkpoint's settings are the
    base, and the stated ones are checked against them and announced by config.resumed_config
    (the one check of the settings that fix the data order and the model)."""
    checkpoint, run_dir = locate_checkpoint(stated["resume"], stated.get("out"), default_out)
    saved, step = saved_settings(checkpoint)
    located = {**stated, "out": str(run_dir)}
    cfg, changes = resumed_config(saved, located, origins, str(checkpoint))
    return RunPlan(cfg, checkpoint, step, tuple(changes), later_checkpoints(run_dir, step))


def plan_run(cfg: TrainConfig) -> RunPlan:
    """The plan of a complete TrainConfig (train() called from code): a new run in cfg.out, or
    a resume whose settings that fix the data order and the model are the checkpoint's."""
    if cfg.resume is None:
        return RunPlan(cfg)
    checkpoint, run_dir = locate_checkpoint(cfg.resume, cfg.out, cfg.out)
    saved, step = saved_settings(checkpoint)
    check_fixed_settings(cfg, saved, checkpoint)
    located = replace(cfg, out=str(run_dir))
    return RunPlan(located, checkpoint, step, (), later_checkpoints(run_dir, step))


def locate_checkpoint(resume: str, out: str | None, default_out: str) -> tuple[Path, Path]:
    """(the checkpoint `--resume` names, the run directory the resumed run writes into): for
    `latest`, the newest checkpoint of --out (`out`, None when not stated: `default_out`); for a
    checkpoint directory RUN/checkpoints/step_X, itself and RUN (a stated --out must be RUN); for
    a checkpoint kept elsewhere, itself and the stated --out."""
    if resume == "latest":
        run_dir = Path(out if out is not None else default_out)
        latest = latest_checkpoint(run_dir)
        if latest is None:
            raise UserError(f"--resume latest: no checkpoint in {checkpoints_dir(run_dir)}")
        return latest, run_dir
    path = Path(resume)
    if not is_checkpoint(path):
        raise UserError(f"--resume {path}: not a checkpoint directory")
    folder = path.parent if path.parent.name else path.absolute().parent
    if folder.name.startswith(ABANDONED_PREFIX) and folder.parent.name == CHECKPOINTS_DIR:
        raise UserError(
            f"--resume {path}: set aside when its run was rewound; to go back to that branch, "
            f"move the checkpoints of the current one out of {folder.parent} and this one in"
        )
    if folder.name != CHECKPOINTS_DIR:
        if out is None:
            raise UserError(
                f"--resume {path}: not in a run's {CHECKPOINTS_DIR} folder; say which run "
                "directory the resumed run writes into with --out"
            )
        return path, Path(out)
    own = folder.parent
    if out is not None and Path(out).resolve() != own.resolve():
        raise UserError(
            f"--resume {path}: a checkpoint of the run {own}, not of --out {out}; leave out "
            "--out to continue that run, or copy the run to continue it elsewhere"
        )
    run_dir = Path(out) if out is not None else own
    if path.name == BEST_LINK and path.is_symlink():
        path = best_checkpoint(run_dir) or path  # name the step it resumes from
    return path, run_dir


@contextmanager
def claimed(make_plan: Callable[[], RunPlan]) -> Iterator[RunPlan]:
    """Rank 0's plan (`make_plan()`, called on rank 0 only) on every rank, with the run
    directory locked by rank 0 until the block ends; a UserError (the lock held by another
    process, a bad --resume) is raised on every rank."""
    plan = distributed.decide_on_rank0(lambda: _locked(make_plan()))
    try:
        yield plan
    finally:
        if distributed.is_main():
            lock.release(plan.run_dir)


def _locked(plan: RunPlan) -> RunPlan:
    """`plan`, its run directory locked by this process."""
    lock.acquire(plan.run_dir)
    return plan


def check_unchanged(plan: RunPlan) -> None:
    """Rank 0, the lock held: the run directory is as the plan found it (another process may
    have written to it before the lock was taken), and a new run's holds no checkpoints."""
    if plan.checkpoint is None:
        if list_checkpoints(plan.run_dir):
            raise UserError(
                f"{plan.run_dir} already holds a run with checkpoints: continue it with "
                "--resume, or choose another --out"
            )
    elif later_checkpoints(plan.run_dir, plan.step) != plan.abandoned:
        raise UserError(f"{plan.run_dir}: its checkpoints changed meanwhile; start again")


def start_from(plan: RunPlan, state: TrainingState) -> None:
    """Rank 0, once the checkpoint `state` came from has loaded and before the resumed run logs
    anything: set an abandoned branch aside (rewinding) and cut the logs back to the checkpoint
    (events logged after it are logged again)."""
    if plan.abandoned:
        set_aside(plan.run_dir, plan.abandoned, state.best_step)
    truncate_logs(plan.run_dir, state.step)


def set_aside(run_dir: Path, abandoned: tuple[Path, ...], best_step: int | None) -> None:
    """Move the checkpoints of an abandoned branch into RUN/checkpoints/abandoned-<time>/ and
    point `best` at the kept branch's best: the checkpoint at `best_step` (the resumed
    checkpoint's Progress.best_step), or none where that one was pruned or no step was recorded
    (a checkpoint older than best_step) and `best` named an abandoned one."""
    root = checkpoints_dir(run_dir)
    aside = _new_folder(root, ABANDONED_PREFIX + time.strftime("%Y%m%d-%H%M%S"))
    for path in abandoned:
        replace_durably(path, aside / path.name)
    kept_best = step_dir(run_dir, best_step) if best_step is not None else None
    if kept_best is not None and is_checkpoint(kept_best):
        mark_best(run_dir, kept_best)
    elif best_checkpoint(run_dir) is None:
        (root / BEST_LINK).unlink(missing_ok=True)
    names = ", ".join(p.name for p in abandoned)
    print(f"rewound: moved the later checkpoints ({names}) to {aside}", flush=True)


def _new_folder(parent: Path, name: str) -> Path:
    """parent/name created, or parent/name-2, -3... when that exists."""
    for n in range(1, 1000):
        folder = parent / (name if n == 1 else f"{name}-{n}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise FileExistsError(parent / name)
