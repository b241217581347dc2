"""Crash anywhere, lose nothing: a training run and a data preparation are crashed at every write,
fsync, rename and removal that gpt/fsio.py makes (GPT_FAULT_AT=k, counted first by a dry run
with GPT_FAULT_COUNT), the way SQLite and crash-consistency studies test storage. After each
crash the checkpoints there are whole and none that was whole before is lost; the user's next
command (a bare `--out DIR --resume`, or the same fineweb.py command) gives what an
uninterrupted run gives.

The commands run in children forked from one harness process (`serve`) that imported train.py
and fineweb.py once: each child runs `gpt.cli.run(main, argv)`, as the scripts do, from the
test's folder with relative paths, so that each of the many runs costs its own work only.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
import torch

from gpt.checkpoint import is_checkpoint, load_model_dir, read_meta
from gpt.cli import run
from gpt.fsio import FAULT_AT_ENV, FAULT_COUNT_ENV, FAULT_EXIT_STATUS
from tests.conftest import tiny_run_args

ROOT = Path(__file__).resolve().parent.parent

# Two steps, checkpoints after 0 (the first evaluation) and 2 (the end); no matmul timing
# (MFU's peak is given), so that a run costs a fraction of a second.
TRAIN_SETTINGS = [
    "--max-steps=2",
    "--save-every=100",
    "--eval-every=100",
    "--keep=10",
    "--samples=0",
    "--no-export",
    "--no-plot",
    "--no-progress",
    "--peak-flops=1e12",
]
# A small corpus in a few shards, with the custom tokeniser (its copy is written too).
PREPARE = ["--source", "python-docs", "--max-docs", "6", "--shard-size", "4K", "--val-tokens", "4K"]
PREPARE += ["--workers", "1", "--quiet"]

Main = Callable[[list[str] | None], int | None]


def serve() -> None:
    """The harness: for each job read from stdin (a JSON line: script, argv, cwd, env, log),
    fork a child that runs the script's main as `python SCRIPT ARGV` would, its output into the
    log file; write back its exit status (a JSON line). A script is imported at its first job."""
    mains: dict[str, Main] = {}
    for line in sys.stdin:
        job = json.loads(line)
        script = job["script"]
        if script not in mains:
            mains[script] = importlib.import_module(script.removesuffix(".py")).main
            if script == "train.py":
                _warm_up_torch()
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            _run_child(mains[script], job)
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        print(json.dumps(status), flush=True)


def _warm_up_torch() -> None:
    """Pay torch's lazy start (its first backward and optimizer step import and set up much)
    once, here, rather than in every child."""
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.zeros(2, 4)).sum().backward()
    optimizer.step()


def _run_child(main: Main, job: dict[str, Any]) -> NoReturn:
    """The forked child: run one command, then end without returning into the harness."""
    code = 1
    try:
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.chdir(job["cwd"])
        os.environ.update(job["env"])
        run(main, job["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class Harness:
    """Runs commands in the `serve` process, from `cwd`."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        for name in (FAULT_AT_ENV, FAULT_COUNT_ENV):
            env.pop(name, None)
        code = "from tests.test_crash_consistency import serve; serve()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, script: str, argv: list[str], log: str, **env: str) -> int:
        """The exit status of `script argv` with `env` added; its output goes to cwd/log."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        job = {"script": script, "argv": argv, "cwd": str(self.cwd), "env": env, "log": log}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        assert reply, "the harness died"
        return int(json.loads(reply))

    def output(self, log: str) -> str:
        return (self.cwd / log).read_text()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    """A harness working in a folder in RAM (/dev/shm) where there is one: the many fsyncs cost
    nothing there, and what is tested, the end of the process, does not depend on them. The
    folders the commands write into exist, so that every run makes the same steps."""
    shm = Path("/dev/shm")
    in_ram = shm.is_dir() and os.access(shm, os.W_OK)
    cwd = Path(tempfile.mkdtemp(dir=shm, prefix="crash-")) if in_ram else tmp_path
    (cwd / "runs").mkdir()
    (cwd / "data").mkdir()
    h = Harness(cwd)
    try:
        yield h
    finally:
        h.close()
        if in_ram:
            shutil.rmtree(cwd)


def count_fault_points(harness: Harness, script: str, argv: list[str]) -> int:
    """Run the command uninterrupted, counting the steps gpt/fsio.py makes."""
    count_file = harness.cwd / "fault-count"
    status = harness.run(script, argv, "whole.log", **{FAULT_COUNT_ENV: str(count_file)})
    assert status == 0, harness.output("whole.log")
    return int(count_file.read_text())


def crash_at(harness: Harness, k: int, script: str, argv: list[str]) -> None:
    """Run the command with a crash at fsio's k-th step."""
    status = harness.run(script, argv, "crash.log", **{FAULT_AT_ENV: str(k)})
    assert status == FAULT_EXIT_STATUS, harness.output("crash.log")


# ----------------------------------------------------------------------------- training


def train_losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [e["value"] for e in map(json.loads, lines) if e["kind"] == "train"]


def checkpoint_files(path: Path) -> dict[str, bytes]:
    """What must be equal in two runs' checkpoints: the weights, the loader positions and the
    tokeniser (config.json names the run directory; the optimizer and RNG states show in the
    losses and weights that follow them)."""
    names = ("model.safetensors", "loader.json", "tokeniser.tkn")
    return {name: (path / name).read_bytes() for name in names}


def whole_checkpoints(run: Path, reference: Path) -> list[int]:
    """The steps of `run`'s checkpoints (RUN/checkpoints/step_XXXXXXX), each checked to load
    and to equal `reference`'s."""
    steps = []
    for path in sorted((run / "checkpoints").glob("step_*")):
        assert is_checkpoint(path), f"{path} is not whole"
        assert checkpoint_files(path) == checkpoint_files(reference / "checkpoints" / path.name)
        load_model_dir(path)
        for name in ("optimizer.pt", "rng.pt"):
            torch.load(path / name, weights_only=True)
        steps.append(read_meta(path)["training"]["step"])
    return steps


def edges(states: dict[int, list[int]]) -> list[int]:
    """The first and the last crash point of each run of equal states.

    >>> edges({1: [], 2: [], 3: [], 4: [0], 5: [0, 2]})
    [1, 3, 4, 5]
    """
    ks = sorted(states)
    return [
        k
        for i, k in enumerate(ks)
        if i in (0, len(ks) - 1) or states[ks[i - 1]] != states[k] or states[ks[i + 1]] != states[k]
    ]


@pytest.mark.slow
def test_a_training_run_crashed_at_every_step_resumes_whole(
    tiny_train_data: Path, harness: Harness
) -> None:
    """Crash a run at each of fsio's steps (its run config and two checkpoint saves): the
    checkpoints there are whole and equal the uninterrupted run's, and none that was there at an
    earlier crash point is missing. Then, for the first and last crash point between two
    checkpoints (the fewest and the most leftovers of the save under way), `--out DIR --resume`
    (before the first checkpoint: the same command again) ends with the uninterrupted run's
    losses and checkpoints, and no temp folder left beside them."""
    cwd = harness.cwd
    whole = cwd / "runs" / "whole"
    command = tiny_run_args(tiny_train_data, "runs/whole") + TRAIN_SETTINGS
    n = count_fault_points(harness, "train.py", command)
    assert whole_checkpoints(whole, whole) == [0, 2]
    assert n >= 2 * 15  # the dry run counted every step of the saves
    states: dict[int, list[int]] = {}
    for k in range(1, n + 1):
        command = tiny_run_args(tiny_train_data, f"runs/k{k}") + TRAIN_SETTINGS
        crash_at(harness, k, "train.py", command)
        states[k] = whole_checkpoints(cwd / "runs" / f"k{k}", whole)
        lost = set(states.get(k - 1, [])) - set(states[k])
        assert not lost, f"the crash at step {k} lost checkpoints {lost}"
    assert [states[1], states[n]] == [[], [0, 2]]

    for k in edges(states):
        out = f"runs/k{k}"
        if states[k]:
            again = ["--out", out, "--resume"]
        else:  # no checkpoint yet: the user starts the run again
            again = tiny_run_args(tiny_train_data, out) + TRAIN_SETTINGS
        status = harness.run("train.py", again, "resume.log")
        assert status == 0, harness.output("resume.log")
        if states[k]:  # from the latest whole checkpoint
            latest = f"resumed from {out}/checkpoints/step_{states[k][-1]:07d}"
            assert latest in harness.output("resume.log")
        assert train_losses(cwd / out) == train_losses(whole), k
        assert whole_checkpoints(cwd / out, whole) == [0, 2]
        left = sorted(p.name for p in (cwd / out / "checkpoints").iterdir())
        assert left == sorted(p.name for p in (whole / "checkpoints").iterdir()), k


# ----------------------------------------------------------------------------- data preparation


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_a_preparation_crashed_at_every_step_reruns_to_identical_shards(
    tiny_train_data: Path, harness: Harness
) -> None:
    """Crash fineweb.py at each of fsio's steps (manifest, tokeniser copy, each shard and the
    manifest after it); the same command again gives the uninterrupted run's files, byte for
    byte, and nothing else (no temp file left)."""
    tokeniser = ["--tokeniser", str(tiny_train_data / "tokeniser.tkn")]
    n = count_fault_points(harness, "fineweb.py", ["--out", "data/whole", *tokeniser, *PREPARE])
    reference = files_of(harness.cwd / "data" / "whole")
    assert len([name for name in reference if name.endswith(".bin")]) >= 3
    for k in range(1, n + 1):
        out = harness.cwd / "data" / f"k{k}"
        command = ["--out", f"data/k{k}", *tokeniser, *PREPARE]
        crash_at(harness, k, "fineweb.py", command)
        status = harness.run("fineweb.py", command, "rerun.log")
        assert status == 0, harness.output("rerun.log")
        assert files_of(out) == reference, k
        shutil.rmtree(out)
