"""scripts/speedrun.sh: the commands it runs on an 8-GPU node (DRY_RUN=1 prints them), each
accepted by its own command's parser, and what a rerun continues or leaves out."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

import fineweb
import hellaswag
from gpt.cli import parse_options
from train import build_parser, resolve_config

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "speedrun.sh"


def dry_run(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`DRY_RUN=1 bash scripts/speedrun.sh ARGS` from `cwd`, with `env` over ours."""
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "DRY_RUN": "1", **env}, timeout=60)  # fmt: skip


def commands(result: subprocess.CompletedProcess[str]) -> list[list[str]]:
    """The commands a dry run printed, as argument lists."""
    assert result.returncode == 0, result.stderr
    return [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]


@pytest.fixture
def node(tmp_path: Path) -> dict[str, str]:
    """An 8-GPU node as the script sees it: an nvidia-smi that lists 8 GPUs first on PATH; the
    run and data directories in tmp_path."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text('#!/bin/sh\nfor i in 0 1 2 3 4 5 6 7; do echo "GPU $i: NVIDIA H200"; done\n')
    smi.chmod(0o755)
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    return {"PATH": path, "RUN": str(tmp_path / "run"), "DATA": str(tmp_path / "data")}


def test_the_script_parses() -> None:
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_fresh_node_prepares_trains_on_every_gpu_evaluates_and_exports(
    node: dict[str, str], tmp_path: Path
) -> None:
    run, data = node["RUN"], node["DATA"]
    best = f"{run}/checkpoints/best"
    assert commands(dry_run(tmp_path, node, "--wandb")) == [
        ["python", "fineweb.py", "--source", "fineweb-edu", "--name", "sample-10BT",
         "--tokeniser", "gpt2", "--out", data],
        ["torchrun", "--standalone", "--nproc_per_node=8", "train.py", "--preset", "modern",
         "--data", data, "--out", run, "--no-export", "--wandb"],
        ["python", "hellaswag.py", "-m", best, "--dtype", "bfloat16", "--output",
         f"{run}/hellaswag.json"],
        ["python", "-m", "gpt.hf", "export", best, f"{run}/export"],
    ]  # fmt: skip


def test_each_command_is_one_its_parser_accepts(node: dict[str, str], tmp_path: Path) -> None:
    """The data as fineweb.py reads it (GPT-2's tokeniser), the run as train.py resolves it
    (the modern model on that data), HellaSwag's options."""
    prepare, train, evaluate, _ = commands(dry_run(tmp_path, node))
    opts = parse_options(fineweb.FinewebOptions, prepare[2:], "fineweb.py", "")
    assert (opts.source, opts.name, opts.tokeniser, opts.out) == (
        "fineweb-edu", "sample-10BT", "gpt2", node["DATA"],
    )  # fmt: skip
    preset, cfg, _ = resolve_config(build_parser().parse_args(train[4:]))
    assert (preset, cfg.model, cfg.optimizer, cfg.data, cfg.out, cfg.export) == (
        "modern", "modern", "muon", node["DATA"], node["RUN"], False,
    )  # fmt: skip
    scored = parse_options(hellaswag.HellaSwagOptions, evaluate[2:], "hellaswag.py", "")
    assert scored.model == f"{node['RUN']}/checkpoints/best" and scored.dtype == "bfloat16"


def test_a_rerun_resumes_and_skips_what_is_done(node: dict[str, str], tmp_path: Path) -> None:
    """A run with a checkpoint resumes; HellaSwag's results and the export newer than the best
    checkpoint are kept; the data step always runs (fineweb.py itself resumes or keeps)."""
    checkpoints = Path(node["RUN"]) / "checkpoints"
    (checkpoints / "step_0001500").mkdir(parents=True)
    (checkpoints / "best").symlink_to("step_0001500")
    resumed = commands(dry_run(tmp_path, node))
    assert resumed[1][-1] == "--resume" and len(resumed) == 4

    (Path(node["RUN"]) / "hellaswag.json").write_text("{}")
    (Path(node["RUN"]) / "export").mkdir()
    (Path(node["RUN"]) / "export" / "config.json").write_text("{}")
    best = checkpoints / "step_0001500"
    os.utime(best, (best.stat().st_mtime - 60,) * 2)  # saved a minute before them
    done = commands(dry_run(tmp_path, node))
    assert [c[:2] for c in done] == [["python", "fineweb.py"], ["torchrun", "--standalone"]]


def test_no_gpu_is_one_line(tmp_path: Path) -> None:
    result = dry_run(tmp_path, {"NPROC": "0"})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: no GPU") and result.stderr.count("\n") == 1
