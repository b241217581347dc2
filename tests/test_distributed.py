"""Several processes on CPU (torchrun, gloo): DDP and FSDP2 against one process with the same
global batches, FSDP resume, and the rank helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt import checkpoint as ckpt
from gpt import distributed
from gpt.config import TrainConfig, train_preset
from gpt.train import rundir
from gpt.train.loop import train
from tests.conftest import tiny_run_args

ROOT = Path(__file__).resolve().parent.parent

# 512 tokens per step = 4 rows x 32 tokens x accum 4 on one rank, or x accum 2 on each of two
# ranks. The loader gives step i's rows to rank r as the (r)th B*T slice of the step's tokens on
# each micro-step, so both layouts cover exactly the same 16 rows per optimizer step.
GLOBAL = {"total_batch_size": 512, "max_steps": 8, "eval_every": 4, "samples": 0}
# Each optimizer's settings, and how close its final weights come to one process's (per tensor,
# relative). AdamW's: 1e-4. Muon's Newton-Schulz runs in bfloat16, so gradients that differ by
# float32 rounding (another summation order) round to bfloat16 differently here and there, and
# the normalised update, of full size whatever the gradient's, carries that into every step: one
# process with batch 8 x accum 2 instead of 4 x 4 already ends 2e-2 away (its losses 1e-5), so
# Muon's weights are held to 5e-2 while its losses, like AdamW's, stay within 1e-4.
OPTIMIZERS = {
    "adamw": ({}, 1e-4),
    "muon": ({"optimizer": "muon", "schedule": "wsd"}, 5e-2),
}


def events(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["kind"] == kind]


def values(run: Path, kind: str) -> list[float]:
    return [e["value"] for e in events(run, kind)]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    model, _ = ckpt.load_model_dir(rundir.latest_checkpoint(run))
    return model.state_dict()


def flags(settings: dict[str, object]) -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]


def torchrun(
    data: Path, out: Path, *extra: str, optimizer: str = "adamw"
) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(ROOT / "train.py"),
        *tiny_run_args(data, out),
        "--no-export",
        "--no-plot",
        *flags({**GLOBAL, **OPTIMIZERS[optimizer][0]}),
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module", params=list(OPTIMIZERS))
def single_run(
    request: pytest.FixtureRequest, tiny_train_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path]:
    """The reference of each optimizer: one process, gradient accumulation 4."""
    optimizer = request.param
    out = tmp_path_factory.mktemp(f"single_{optimizer}") / "run"
    cfg = train_preset(
        "tiny",
        data=str(tiny_train_data),
        tokeniser=str(tiny_train_data / "tokeniser.tkn"),
        out=str(out),
        export=False,
        plot=False,
        save_every=0,
        **GLOBAL,
        **OPTIMIZERS[optimizer][0],
    )
    train(cfg)
    assert json.loads((out / "config.json").read_text())["grad_accum_steps"] == 4
    return optimizer, out


def assert_same_run(run: Path, reference: Path, weights_rtol: float) -> None:
    """Per-step losses within 1e-4, final weights within weights_rtol relative (per tensor)."""
    assert values(run, "train") == pytest.approx(values(reference, "train"), abs=1e-4)
    assert values(run, "val") == pytest.approx(values(reference, "val"), abs=1e-4)
    ours, theirs = final_weights(run), final_weights(reference)
    for name, w in theirs.items():
        if name.endswith("attn.c_attn.bias"):
            # The key bias adds q.b_k to every score of a row, which softmax ignores: its exact
            # gradient is 0, so it holds only AdamW's response to rounding noise (~1e-5 here,
            # as large as its difference between runs). Compare the query and value thirds.
            third = w.numel() // 3
            w, ours[name] = w.clone(), ours[name].clone()
            w[third : 2 * third] = ours[name][third : 2 * third] = 0
        rel = (ours[name] - w).norm() / w.norm().clamp_min(1e-12)
        assert rel < weights_rtol, f"{name}: relative difference {rel:.2e}"


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_on_two_ranks_matches_one_rank(
    single_run: tuple[str, Path], tiny_train_data: Path, tmp_path: Path
) -> None:
    optimizer, reference = single_run
    out = tmp_path / "ddp"
    torchrun(tiny_train_data, out, "--save-every=0", optimizer=optimizer)
    saved = json.loads((out / "config.json").read_text())
    assert (saved["world_size"], saved["grad_accum_steps"]) == (2, 2)
    assert saved["train"]["optimizer"] == optimizer
    assert [e["step"] for e in events(out, "train")] == list(range(8))  # rank 0 alone logs
    assert_same_run(out, reference, OPTIMIZERS[optimizer][1])


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp_matches_one_rank_and_resumes_exactly(
    single_run: tuple[str, Path], tiny_train_data: Path, tmp_path: Path
) -> None:
    """With Muon too: FSDP2 shards each matrix by rows, and Muon's Newton-Schulz on the DTensor
    shards gathers what each product needs, so every rank orthogonalises the whole matrix, as
    one process does (not its own rows), and the saved state is the full one."""
    optimizer, reference = single_run
    out = tmp_path / "fsdp"
    fsdp = ("--fsdp", "--save-every=4")
    torchrun(tiny_train_data, out, *fsdp, "--keep=5", optimizer=optimizer)
    assert_same_run(out, reference, OPTIMIZERS[optimizer][1])
    whole = values(out, "train")
    # resume the same run from its step-4 checkpoint: steps 4-7 again, the same to the bit
    resume = f"--resume={rundir.step_dir(out, 4)}"
    result = torchrun(tiny_train_data, out, *fsdp, resume, optimizer=optimizer)
    assert "resumed from" in result.stdout
    assert values(out, "train") == whole


def test_setup_without_torchrun_is_one_plain_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    env = distributed.setup("cpu")
    assert (env.rank, env.world_size, env.is_main, env.distributed) == (0, 1, True, False)
    t = torch.tensor([3.0])
    assert distributed.all_reduce_mean(t) is t and t.item() == 3.0
    assert distributed.all_gather_objects({"a": 1}) == [{"a": 1}]


def test_unavailable_device_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="CUDA is not available"):
        distributed.resolve_device("cuda")


def test_fsdp_needs_several_processes(tiny_run_config) -> None:
    cfg: TrainConfig = tiny_run_config(fsdp=True)
    with pytest.raises(ValueError, match="--fsdp needs several processes"):
        train(cfg)
