"""One process per directory (gpt/lock.py): a second training on a run directory, or a second
preparation of a data directory, is refused at once with one line naming the first's PID; the
kernel lets go of a killed process's lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpt import lock
from gpt.cli import UserError
from gpt.train import rundir
from tests.conftest import tiny_run_args
from tests.test_errors import ROOT, TRAIN_FLAGS, run_command, user_error

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
# A preparation that holds its folder: one document, then a source that takes its time.
SLOW_PREPARATION = """
import sys, time
from gpt.data.prepare import prepare_dataset

def documents():
    yield "the first document"
    time.sleep(300)

prepare_dataset(documents(), sys.argv[1], sys.argv[2], shard_size=1000, workers=1, progress=False)
"""
# Take a folder's lock as a command would: a refusal is one line and exit code 2.
TAKE_LOCK = "import sys; from gpt import cli, lock; cli.run(lambda argv: lock.acquire(sys.argv[1]))"


def wait_for_holder(process: subprocess.Popen[bytes], folder: Path, ready=lambda: True) -> None:
    """Until `process` holds `folder`'s lock (its PID is in the lock file) and `ready()`."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, "the first process ended early"
        holder = lock.lock_file(folder)
        if holder.is_file() and holder.read_text().split()[:1] == [str(process.pid)] and ready():
            return
        time.sleep(0.05)
    raise AssertionError(f"{folder} was never locked by process {process.pid}")


def test_a_second_training_on_a_run_directory_is_refused_at_once(
    tiny_train_data: Path, tmp_path: Path
) -> None:
    """Issue 17, item 4: `train.py --out DIR --resume` while a run trains in DIR exits 2 with one
    line naming the running one's PID, which trains on; once that run is killed, its lock is
    gone."""
    run = tmp_path / "runs/x"
    settings = ["--max-steps=100000", "--eval-every=100000", "--no-progress"]
    command = [sys.executable, str(ROOT / "train.py"), *tiny_run_args(tiny_train_data, "runs/x")]
    first = subprocess.Popen(
        [*command, *settings, *TRAIN_FLAGS],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_holder(first, run, lambda: bool(rundir.list_checkpoints(run)))
        start = time.monotonic()
        second = run_command(tmp_path, "train.py", "--out", "runs/x", "--resume")
        took = time.monotonic() - start
        user_error(second, "runs/x", f"process {first.pid} on ")
        assert first.poll() is None  # the first trains on: it was neither waited for nor stopped
        assert took < 60, took
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    with lock.hold(run):  # the kernel released the killed run's lock
        pass


def test_a_second_preparation_of_a_data_directory_is_refused_at_once(
    tiny_train_data: Path, tmp_path: Path
) -> None:
    """Two preparations on one --out: the second (fineweb.py) exits 2 with one line naming the
    first's PID and writes nothing; the first's lock goes with it when it is killed."""
    data = tmp_path / "data"
    tokeniser = str(tiny_train_data / "tokeniser.tkn")
    first = subprocess.Popen(
        [sys.executable, "-c", SLOW_PREPARATION, "data", tokeniser], cwd=tmp_path, env=ENV
    )
    try:
        wait_for_holder(first, data, (data / "tokeniser.tkn").is_file)  # its last file
        before = {p.name: p.read_bytes() for p in data.iterdir()}
        second = run_command(
            tmp_path,
            "fineweb.py",
            *("--source", "python-docs", "--out", "data", "--tokeniser", tokeniser),
            *("--max-docs", "3", "--workers", "1", "--quiet"),
        )
        user_error(second, "data", f"process {first.pid} on ")
        assert {p.name: p.read_bytes() for p in data.iterdir()} == before
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    with lock.hold(data):  # the kernel released the killed process's lock
        pass


def test_the_lock_is_reentrant_here_refused_elsewhere_and_emptied_when_released(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "run"
    with lock.hold(folder):
        assert lock.lock_file(folder).read_text().split()[0] == str(os.getpid())
        with lock.hold(folder):  # the demo holds its run directory while train() takes it
            pass
        start = time.monotonic()
        other = subprocess.run(
            [sys.executable, "-c", TAKE_LOCK, str(folder)],
            env=ENV,
            capture_output=True,
            text=True,
        )
        assert time.monotonic() - start < 10  # at once: no waiting for the holder
        user_error(other, str(folder), f"process {os.getpid()} on ")
    assert lock.lock_file(folder).read_text() == ""  # no stale PID
    with lock.hold(folder):  # free again, for this process and any other
        pass
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UserError, match="exists and is not a folder"):
        lock.acquire(tmp_path / "file")
