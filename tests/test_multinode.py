"""Two torchrun "nodes" on this host (c10d rendezvous, gloo) whose environments differ, and a
failure on rank 0 alone: every rank must still reach the same collectives, or the job must end.

Node 0 is made rank 0 with `--local-addr 127.0.0.1` (node 1 has 127.0.0.2): the c10d rendezvous
ignores --node-rank and orders nodes by address, then process id.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_distributed import GLOBAL, events, single_run, values

ROOT = Path(__file__).resolve().parent.parent
__all__ = ["single_run"]  # the reference run of test_distributed, a fixture here too

# Any download attempt fails at once (connection refused) instead of reaching the network.
OFFLINE = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}


def free_port() -> int:
    """A TCP port that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_flags(data: Path) -> list[str]:
    """train.py's flags for the `tiny` preset on `data`, writing to ./run."""
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in GLOBAL.items()]
    return [
        str(ROOT / "train.py"),
        "--preset=tiny",
        f"--data={data}",
        f"--tokeniser={data / 'tokeniser.tkn'}",
        "--out=run",
        "--no-export",
        "--no-plot",
        "--save-every=0",
        *flags,
    ]


def launch_node(node: int, port: int, flags: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    """One node's torchrun (one process per node), started in the background."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1"]
    cmd += [f"--node-rank={node}", f"--local-addr=127.0.0.{node + 1}", "--rdzv-backend=c10d"]
    cmd += [f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=test{port}"]
    cmd += [f"--rdzv-conf=is_host={int(node == 0)}", *flags]
    return start(cmd, cwd, **env)


def start(cmd: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    """`cmd` in the background, in its own process group (so that its workers can be killed
    with it), offline, without the caller's HELLASWAG_* variables."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("HELLASWAG_")}
    full_env = {**base, **OFFLINE, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env}
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of each process; all are killed, with their workers, if any
    outlives `timeout` (then subprocess.TimeoutExpired fails the test)."""
    deadline = time.monotonic() + timeout
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            out.append((p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.communicate()
    return out


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("single_run", ["adamw"], indirect=True)  # the nodes train with AdamW
def test_two_nodes_where_only_node_0_has_hellaswag(
    single_run: tuple[str, Path], tiny_train_data: Path, shared_data: Path, tmp_path: Path
) -> None:
    """`--hellaswag auto` with HELLASWAG_FILE on node 0 only, and an empty download cache on
    both: rank 0 reads the file and broadcasts its items, both ranks score their share, and the
    run equals one process with twice the gradient accumulation."""
    lines = (shared_data / "hellaswag" / "hellaswag_val.jsonl").read_text().splitlines()[:20]
    items = tmp_path / "hellaswag_20.jsonl"
    items.write_text("\n".join(lines) + "\n")
    cache = tmp_path / "empty_cache"
    cache.mkdir()
    port = free_port()
    flags = [*train_flags(tiny_train_data), "--hellaswag=auto"]
    nodes = [
        launch_node(0, port, flags, tmp_path, HELLASWAG_FILE=str(items), HELLASWAG_DIR=str(cache)),
        launch_node(1, port, flags, tmp_path, HELLASWAG_DIR=str(cache)),
    ]
    for code, _, stderr in finish(nodes, timeout=240):
        assert code == 0, stderr[-3000:]
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    hella = events(run, "hella")
    # n sums both ranks' shares (10 items each): rank 1 scored items it received from rank 0
    assert [(e["step"], e["n"]) for e in hella] == [(0, 20), (4, 20), (8, 20)]
    assert os.listdir(cache) == []  # nothing was downloaded
    # Two ranks sum their micro-batches' gradients in another order than one rank's accumulation:
    # float32 rounding differs by ~1e-6 per step, and 1e-4 leaves a wide margin over 8 AdamW steps
    # while a wrong data split or a missed step would change the loss by far more.
    reference = single_run[1]
    assert values(run, "train") == pytest.approx(values(reference, "train"), abs=1e-4)
    assert values(run, "val") == pytest.approx(values(reference, "val"), abs=1e-4)


@pytest.mark.slow
@pytest.mark.distributed
def test_a_failure_on_rank_0_alone_ends_the_whole_job(
    tiny_train_data: Path, tmp_path: Path
) -> None:
    """At the end rank 0 exports the best checkpoint while rank 1 waits at the last barrier.
    A stray file named `run/export` makes the export fail on rank 0 only: the job must end
    within a minute with a non-zero exit and rank 0's error (not after the 30-minute
    process-group timeout)."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "export").write_text("a file where the export folder goes\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    t0 = time.monotonic()
    [(code, _, stderr)] = finish(
        [start([*cmd, *train_flags(tiny_train_data), "--export"], tmp_path)], timeout=60
    )
    assert time.monotonic() - t0 < 60
    assert code != 0
    assert "run/export: exists and is not an earlier export" in stderr, stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints").is_dir()  # it failed at the end, not at the start
