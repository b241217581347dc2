"""How a run starts (gpt/train/rundir.py's RunPlan): rewinding sets the later checkpoints aside and
continues the new branch, a checkpoint decides the settings but never where the run writes, and
the settings that fix the data order and the model are checked once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gpt import checkpoint as ckpt
from gpt import config as gpt_config
from gpt.cli import UserError
from gpt.config import TrainConfig
from gpt.model.gpt2 import GPT
from gpt.runlog import FORMAT_KIND
from gpt.train import rundir
from gpt.train import state as train_state
from gpt.train.loop import train
from tests.conftest import tiny_run_args
from tests.test_errors import TRAIN_FLAGS, run_command
from tests.test_train_cli import train_script


def resolve(*argv: str) -> tuple[str, TrainConfig, rundir.RunPlan]:
    """What train.py decides from `argv` before it starts anything."""
    args = train_script.build_parser().parse_args(train_script.bare_resume(argv))
    return train_script.resolve_config(args)


def steps(run: Path) -> list[int]:
    return [rundir.checkpoint_step(p) for p in rundir.list_checkpoints(run)]


def logged_steps(run: Path) -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [e["step"] for e in map(json.loads, lines) if e["kind"] != FORMAT_KIND]


@pytest.mark.slow
def test_rewinding_sets_the_later_checkpoints_aside_and_continues_the_new_branch(
    tiny_train_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17, item 2: a run with checkpoints 8, 10 and 12 (--keep 3) rewound to 8 and saving
    every step keeps the new branch's 9, 10 and 11 (pruning once deleted them as they came, the
    abandoned 10 and 12 counting as newest); 10 and 12 are set aside, not deleted; a later bare
    --resume continues step 11, not the abandoned 12."""
    monkeypatch.chdir(tmp_path)
    first = ["--max-steps=12", "--save-every=2", "--eval-every=4", "--keep=3", *TRAIN_FLAGS]
    assert train_script.main([*tiny_run_args(tiny_train_data, "runs/r"), *first]) == 0
    run = tmp_path / "runs/r"
    assert steps(run) == [8, 10, 12]

    rewound = run_command(
        tmp_path,
        "train.py",
        *("--resume", "runs/r/checkpoints/step_0000008", "--max-steps=11", "--save-every=1"),
    )
    assert rewound.returncode == 0, rewound.stderr
    said = [line for line in rewound.stdout.splitlines() if line.startswith("rewound:")]
    assert len(said) == 1 and "(step_0000010, step_0000012)" in said[0], rewound.stdout
    [aside] = rundir.checkpoints_dir(run).glob(f"{rundir.ABANDONED_PREFIX}*")
    assert str(aside.relative_to(tmp_path)) in said[0]
    assert sorted(p.name for p in aside.iterdir()) == ["step_0000010", "step_0000012"]
    assert all(ckpt.is_checkpoint(p) for p in aside.iterdir())  # whole, not deleted
    assert steps(run)[-3:] == [9, 10, 11] and 12 not in steps(run)
    best = rundir.best_checkpoint(run)
    assert best is not None and rundir.checkpoint_step(best) in steps(run)
    assert max(logged_steps(run)) == 11  # the logs hold the new branch only

    _, _, again = resolve("--out", "runs/r", "--resume")  # what a later bare --resume does
    assert (again.checkpoint, again.abandoned) == (rundir.step_dir("runs/r", 11), ())


@pytest.mark.parametrize(("best_step", "best"), [(30, 30), (10, None), (None, None)])
def test_setting_aside_points_best_at_the_kept_branch(
    best_step: int | None, best: int | None, tiny_config, tmp_path: Path
) -> None:
    """`best` pointed at the abandoned 50; it goes to the checkpoint resumed from says was best
    (30), or away where that one was pruned (10) or is not recorded (older checkpoints)."""
    model = GPT(tiny_config)
    for step in (20, 30, 40, 50):
        ckpt.save_model_dir(model, rundir.step_dir(tmp_path, step))
    rundir.mark_best(tmp_path, rundir.step_dir(tmp_path, 50))
    rundir.set_aside(tmp_path, (rundir.step_dir(tmp_path, 50),), best_step)
    assert steps(tmp_path) == [20, 30, 40]
    expected = rundir.step_dir(tmp_path, best) if best is not None else None
    assert rundir.best_checkpoint(tmp_path) == expected
    link = rundir.checkpoints_dir(tmp_path) / rundir.BEST_LINK
    assert link.is_symlink() == (best is not None)  # no link left dangling


@pytest.mark.slow
def test_a_checkpoint_decides_the_settings_but_not_where_the_run_writes(
    tiny_train_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17, item 5's second sentence: a copy of a run, resumed by its checkpoint's path,
    writes into the copy; the `out` saved in the checkpoint (the original's) is not touched. A
    --out that is not the checkpoint's run directory is refused."""
    monkeypatch.chdir(tmp_path)
    first = ["--max-steps=4", "--save-every=2", "--max-lr=0.004", *TRAIN_FLAGS]
    assert train_script.main([*tiny_run_args(tiny_train_data, "runs/t"), *first]) == 0
    original = tmp_path / "runs/t"
    shutil.copytree(original, tmp_path / "copies/t", symlinks=True)
    before = {p: p.read_bytes() for p in original.rglob("*") if p.is_file()}

    resumed = run_command(
        tmp_path, "train.py", "--resume", "copies/t/checkpoints/step_0000002", "--max-steps=6"
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from copies/t/checkpoints/step_0000002" in resumed.stdout
    assert {p: p.read_bytes() for p in original.rglob("*") if p.is_file()} == before
    copy = tmp_path / "copies/t"
    assert steps(copy)[-1] == 6 and max(logged_steps(copy)) == 6
    saved = json.loads((copy / "config.json").read_text())["train"]
    assert (saved["out"], saved["max_lr"]) == ("copies/t", 0.004)  # the checkpoint's settings

    with pytest.raises(UserError, match="step_0000006: a checkpoint of the run copies/t, not of"):
        resolve("--out", "runs/t", "--resume", "copies/t/checkpoints/step_0000006")


def test_the_fixed_settings_are_checked_once_per_resume(
    tiny_run_config, tiny_train_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train.py checks the stated settings (config.resumed_config), train() from code the whole
    TrainConfig (state.check_fixed_settings): one of the two, once (both ran on main)."""
    monkeypatch.chdir(tmp_path)
    args = [*tiny_run_args(tiny_train_data, "runs/t"), "--max-steps=2", *TRAIN_FLAGS]
    assert train_script.main(args) == 0
    calls: list[str] = []
    real = gpt_config.fixed_setting_changes

    def counted(saved: dict, now: dict) -> list[str]:
        calls.append("checked")
        return real(saved, now)

    monkeypatch.setattr(gpt_config, "fixed_setting_changes", counted)
    monkeypatch.setattr(train_state, "fixed_setting_changes", counted)
    assert train_script.main(["--out", "runs/t", "--resume", "--max-steps=3"]) == 0
    assert calls == ["checked"]
    calls.clear()
    train(tiny_run_config(out="runs/t", resume="latest", max_steps=4, samples=0))
    assert calls == ["checked"]


def test_where_a_resume_may_start(tiny_config, tmp_path: Path) -> None:
    """locate_checkpoint: a run's checkpoint resumes into its run (its `best` link names the
    step), one kept elsewhere needs --out, one set aside by a rewind is refused."""
    model = GPT(tiny_config)
    run = tmp_path / "runs/t"
    ckpt.save_model_dir(model, rundir.step_dir(run, 5))
    rundir.mark_best(run, rundir.step_dir(run, 5))
    best = rundir.checkpoints_dir(run) / rundir.BEST_LINK
    assert rundir.locate_checkpoint(str(best), None, "runs/x") == (rundir.step_dir(run, 5), run)
    assert rundir.locate_checkpoint("latest", str(run), "runs/x") == (rundir.step_dir(run, 5), run)

    kept = tmp_path / "downloads/ckpt"
    ckpt.save_model_dir(model, kept)
    with pytest.raises(UserError, match="not in a run's checkpoints folder; .* --out"):
        rundir.locate_checkpoint(str(kept), None, "runs/x")
    assert rundir.locate_checkpoint(str(kept), "runs/new", "runs/x") == (kept, Path("runs/new"))

    aside = rundir.checkpoints_dir(run) / f"{rundir.ABANDONED_PREFIX}20250101-000000/step_0000009"
    ckpt.save_model_dir(model, aside)
    with pytest.raises(UserError, match="set aside when its run was rewound"):
        rundir.locate_checkpoint(str(aside), str(run), "runs/x")
