"""The modern family end to end, through the commands a user runs and the code paths GPT-2 uses:
train.py (Muon + AdamW, WSD, HellaSwag in the loop, export), a resume that equals the
uninterrupted run, inference.py and hellaswag.py on the checkpoint and on the export.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_trainer import write_hellaswag

ROOT = Path(__file__).resolve().parent.parent


def run(script: str, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, *([str(ROOT / script)] if script.endswith(".py") else ["-m", script])]
    result = subprocess.run([*args, *argv], capture_output=True, text=True, env=env, cwd=cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.fixture(scope="module")
def modern_run(tiny_train_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`train.py --preset modern-tiny` from its own working directory with a relative --out:
    6 steps, a checkpoint every 3, HellaSwag and samples at each evaluation, the export."""
    cwd = tmp_path_factory.mktemp("modern")
    hella = write_hellaswag(cwd / "hellaswag.jsonl")
    run(
        "train.py", "--preset", "modern-tiny", "--data", str(tiny_train_data),
        "--tokeniser", str(tiny_train_data / "tokeniser.tkn"), "--out", "runs/m",
        "--max-steps", "6", "--save-every", "3", "--eval-every", "3", "--keep", "3",
        "--hellaswag", str(hella), "--no-plot", cwd=cwd,
    )  # fmt: skip
    return cwd


def test_the_run_logs_hellaswag_and_exports_qwen3(modern_run: Path) -> None:
    run_dir = modern_run / "runs/m"
    kinds = [
        json.loads(line)["kind"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert kinds.count("hella") == 3 and kinds.count("val") == 3 and "sample" in kinds
    exported = json.loads((run_dir / "export/config.json").read_text())
    assert exported["model_type"] == "qwen3"
    assert (run_dir / "export/README.md").is_file()


def test_resume_from_the_middle_equals_the_whole_run(modern_run: Path) -> None:
    """A copy of the run resumed from its step-3 checkpoint ends with the same weights and the
    same logged losses as the run itself (Muon's and AdamW's states restored exactly)."""
    whole = modern_run / "runs/m"
    copy = modern_run / "runs/copy"
    shutil.copytree(whole, copy, symlinks=True)
    for later in ("step_0000006",):
        shutil.rmtree(copy / "checkpoints" / later)
    (copy / "checkpoints/best").unlink(missing_ok=True)
    run(
        "train.py",
        "--out",
        "runs/copy",
        "--resume",
        "runs/copy/checkpoints/step_0000003",
        cwd=modern_run,
    )
    for name in ("model.safetensors",):
        a = load_file(str(whole / "checkpoints/step_0000006" / name))
        b = load_file(str(copy / "checkpoints/step_0000006" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def losses(run_dir: Path) -> list[tuple[int, float]]:
        records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
        return [(r["step"], r["value"]) for r in records if r["kind"] in ("train", "val")]

    assert losses(copy) == losses(whole)


def test_inference_and_hellaswag_on_checkpoint_and_export(modern_run: Path) -> None:
    hella = modern_run / "hellaswag.jsonl"
    for model in ("runs/m/checkpoints/best", "runs/m/export"):
        out = run(
            "inference.py", "--model", model, "--prompt", "The", "--max-tokens", "6",
            "--device", "cpu", "--temperature", "0", cwd=modern_run,
        ).stdout  # fmt: skip
        assert "The" in out
        scored = run(
            "hellaswag.py", "--model", model, "--data", str(hella), "--device", "cpu",
            cwd=modern_run,
        ).stdout  # fmt: skip
        assert "acc_norm" in scored


def test_recipes_benchmark_smoke(tmp_path: Path) -> None:
    """`bench/recipes.py --smoke` from another directory with a relative --out: both recipes
    train, the comparison is printed and the picture written."""
    result = run("bench/recipes.py", "--smoke", "--out", "runs/smoke", cwd=tmp_path)
    assert "modern" in result.stdout and "best GPT-2 run's final val loss" in result.stdout
    png = tmp_path / "runs/smoke/recipes.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
