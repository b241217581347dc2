"""A full disk: a write that finds no space ends in one line naming the file and the space left,
exit code 1, its old content intact; a training run that fills its disk keeps its older
checkpoints and resumes once there is room. The disk is a small tmpfs (mount needs root; the
tests skip, saying why, where it is refused)."""

from __future__ import annotations

import errno
import gc
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gpt import fsio
from gpt.checkpoint import is_checkpoint, load_model_dir
from gpt.cli import DiskFullError, run
from tests.conftest import tiny_run_args

ROOT = Path(__file__).resolve().parent.parent
FULL = re.compile(r"error: (\S+): not written, the disk is full \(([0-9.]+ (bytes|KiB|MiB)) free\)")


@contextmanager
def small_disk(folder: Path, size: str) -> Iterator[Callable[[str], None]]:
    """A tmpfs of `size` (e.g. "64k") mounted at `folder`; yields a function that resizes it."""
    folder.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command to make a small disk with")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill ({mounted.stderr.strip() or 'not root'})")

    def resize(new_size: str) -> None:
        remount = ["mount", "-o", f"remount,size={new_size}", str(folder)]
        subprocess.run(remount, check=True, capture_output=True)

    try:
        yield resize
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True, capture_output=True)


def torch_file(target: Path) -> None:
    with fsio.atomic_dir(target) as tmp:
        torch.save({"x": torch.zeros(100_000)}, tmp / "big.pt")


def safetensors_file(target: Path) -> None:
    with fsio.atomic_dir(target) as tmp:
        save_file({"x": torch.zeros(100_000)}, str(tmp / "big.safetensors"))


def json_file(target: Path) -> None:
    fsio.write_json_atomic(target, {"x": "y" * 200_000})


def copied_file(target: Path) -> None:
    source = target.parent.parent / "source"
    source.write_bytes(b"z" * 200_000)
    fsio.copy_atomic(source, target)


@pytest.mark.parametrize("write", [torch_file, safetensors_file, json_file, copied_file])
def test_a_write_that_fills_the_disk_names_the_file_and_keeps_the_old(
    tmp_path: Path, write: Callable[[Path], None]
) -> None:
    """Each kind of writer (torch.save's C++ stream, safetensors, Python's own files) fails with
    DiskFullError naming the target and the space left after its temp was removed; the target
    keeps its old content and nothing is left beside it."""
    disk = tmp_path / "disk"
    with small_disk(disk, "64k"):
        target = disk / "target"
        if write in (torch_file, safetensors_file):
            target.mkdir()
            (target / "old").write_text("old")
        else:
            target.write_text("old")
        with pytest.raises(DiskFullError) as caught:
            write(target)
        message = str(caught.value)
        del caught  # its traceback holds torch.save's open file, whose space comes back after
        gc.collect()
        free = shutil.disk_usage(disk).free
        assert message == f"{target}: not written, the disk is full ({fsio.human_size(free)} free)"
        assert free > 32 * 1024  # the temp's space, given back
        old = target / "old" if target.is_dir() else target
        assert old.read_text() == "old"
        assert sorted(p.name for p in disk.iterdir()) == ["target"]


def test_the_runner_reports_a_full_disk_in_one_line_exit_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def full(argv: object) -> int:
        raise DiskFullError("runs/x/checkpoints/step_0000008: not written, the disk is full")

    def full_elsewhere(argv: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device", "runs/x/metrics.jsonl")

    def full_unnamed(argv: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def broken(argv: object) -> int:
        raise OSError(errno.EIO, "Input/output error")

    for main, line in (
        (full, "error: runs/x/checkpoints/step_0000008: not written, the disk is full"),
        (full_elsewhere, "error: runs/x/metrics.jsonl: not written, the disk is full "),
        (full_unnamed, "error: a write failed, the disk is full (No space left on device)\n"),
    ):
        with pytest.raises(SystemExit) as ended:
            run(main, [])
        assert ended.value.code == 1
        assert capsys.readouterr().err.startswith(line)
    with pytest.raises(OSError, match="Input/output"):  # another I/O error keeps its traceback
        run(broken, [])


@pytest.mark.slow
def test_a_run_that_fills_its_disk_stops_in_one_line_and_resumes_after(
    tiny_train_data: Path, tmp_path: Path
) -> None:
    """A tiny run checkpointing every 2 steps on a 2 MB disk: the save that does not fit ends the
    run with exit code 1 and one line naming that checkpoint and the space left (no C++
    traceback), the older checkpoints load, no half-written one is left; with room made, a bare
    --resume continues to the end."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    settings = ["--max-steps=20", "--save-every=2", "--eval-every=100", "--keep=100"]
    settings += ["--samples=0", "--no-export", "--no-plot", "--no-progress", "--peak-flops=1e12"]
    with small_disk(tmp_path / "disk", "2m") as resize:
        first = subprocess.run(
            [
                sys.executable,
                str(ROOT / "train.py"),
                *tiny_run_args(tiny_train_data, "disk/run"),
                *settings,
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert first.returncode == 1, first.stderr
        assert "Traceback" not in first.stderr
        line = first.stderr.strip().splitlines()[-1]
        match = FULL.fullmatch(line)
        assert match, line
        checkpoints = sorted((tmp_path / "disk" / "run" / "checkpoints").glob("*step_*"))
        assert len(checkpoints) >= 2 and all(is_checkpoint(p) for p in checkpoints)
        assert match.group(1) > str(checkpoints[-1].relative_to(tmp_path))  # a later one
        for path in checkpoints:
            load_model_dir(path)
            torch.load(path / "optimizer.pt", weights_only=True)

        resize("8m")
        resumed = subprocess.run(
            [sys.executable, str(ROOT / "train.py"), "--out", "disk/run", "--resume"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert resumed.returncode == 0, resumed.stderr
        assert f"resumed from {checkpoints[-1].relative_to(tmp_path)}" in resumed.stdout
        lines = (tmp_path / "disk" / "run" / "metrics.jsonl").read_text().splitlines()
        steps = [e["step"] for e in map(json.loads, lines) if e["kind"] == "train"]
        assert steps == list(range(20))
        assert is_checkpoint(tmp_path / "disk" / "run" / "checkpoints" / "step_0000020")
