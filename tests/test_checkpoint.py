"""Checkpoint directories: atomic writes, validated loads, pruning, exact resume after SIGKILL."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gpt import checkpoint as ckpt
from gpt.config import TrainConfig
from gpt.fsio import atomic_dir
from gpt.hf import from_pretrained
from gpt.model.gpt2 import GPT
from gpt.train import rundir
from gpt.train import state as train_state
from gpt.train.loop import train
from gpt.train.recipe import configure_optimizer
from tests.conftest import tiny_run_args

ROOT = Path(__file__).resolve().parent.parent


# One rank's DataLoader.state_dict(), as a checkpoint stores it.
LOADER_STATE = {
    "version": 1,
    "split": "train",
    "seed": 1337,
    "tokens_in_split": 9000,
    "epoch": 0,
    "position": 384,
}


def training_state(model: GPT, step: int = 3) -> train_state.TrainingState:
    """A state with a real (non-empty) AdamW state after one step."""
    opt = configure_optimizer(model, TrainConfig(), torch.device("cpu"))
    model(torch.randint(0, 512, (2, 8)), torch.randint(0, 512, (2, 8)))[1].backward()
    opt.step()
    return train_state.TrainingState(
        step=step,
        tokens=step * 128,
        best_val_loss=4.5,
        world_size=1,
        train_config={"batch_size": 4},
        optimizer=opt.state_dict(),
        loader=[LOADER_STATE],
        rng=[train_state.capture_rng_state()],
    )


def test_model_dir_round_trip(tiny_config, tmp_path: Path) -> None:
    model = GPT(tiny_config).eval()
    ckpt.save_model_dir(model, tmp_path / "m", extra={"note": "x"})
    loaded, meta = ckpt.load_model_dir(tmp_path / "m")
    idx = torch.randint(0, tiny_config.vocab_size, (2, 16))
    torch.testing.assert_close(loaded(idx)[0], model(idx)[0], rtol=0, atol=0)
    assert meta["note"] == "x" and ckpt.is_checkpoint(tmp_path / "m")


def test_training_state_round_trip(tiny_config, tmp_path: Path) -> None:
    model = GPT(tiny_config)
    state = training_state(model)
    state.rng = [train_state.capture_rng_state()]
    expected = (random.random(), np.random.rand(), torch.rand(3))
    path = train_state.save_checkpoint(
        tmp_path / "c", ckpt.model_state_for_saving(model), tiny_config, state, None, None
    )
    back = train_state.load_training_state(path)
    assert (back.step, back.tokens, back.best_val_loss, back.world_size) == (3, 384, 4.5, 1)
    assert back.loader == state.loader and back.train_config == state.train_config
    for k, v in state.optimizer["state"].items():
        for name, t in v.items():
            torch.testing.assert_close(back.optimizer["state"][k][name], t, rtol=0, atol=0)
    # the same model directory loader reads a training checkpoint
    loaded, meta = ckpt.load_model_dir(path)
    assert meta["training"]["step"] == 3
    for name, t in ckpt.model_state_for_saving(model).items():
        assert torch.equal(loaded.state_dict()[name], t)
    # restoring the RNG states replays the same random numbers
    train_state.restore_rng_state(back.rng[0])
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(3), expected[2])


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_loading_never_unpickles_objects(tiny_config, tmp_path: Path) -> None:
    model = GPT(tiny_config)
    path = train_state.save_checkpoint(
        tmp_path / "c",
        ckpt.model_state_for_saving(model),
        tiny_config,
        training_state(model),
        None,
        None,
    )
    torch.save({"state": {}, "param_groups": [], "x": Evil()}, path / train_state.OPTIMIZER_FILE)
    with pytest.raises(ckpt.CheckpointError, match="damaged training state"):
        train_state.load_training_state(path)


def test_a_failed_save_leaves_the_old_directory(tiny_config, tmp_path: Path) -> None:
    model = GPT(tiny_config)
    out = ckpt.save_model_dir(model, tmp_path / "m")
    before = (out / ckpt.CONFIG_FILE).read_bytes()
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "partial").write_text("half")
        raise RuntimeError("disk full")
    assert (out / ckpt.CONFIG_FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp folder left


def test_prune_keeps_the_newest_and_the_best(tiny_config, tmp_path: Path) -> None:
    model = GPT(tiny_config)
    for step in (5, 10, 15, 20):
        ckpt.save_model_dir(model, rundir.step_dir(tmp_path, step))
    rundir.mark_best(tmp_path, rundir.step_dir(tmp_path, 5))
    stray = rundir.checkpoints_dir(tmp_path) / ".step_0000025.tmpab12"  # a save cut short
    stray.mkdir()
    deleted = rundir.prune_checkpoints(tmp_path, keep=2)
    assert deleted == [rundir.step_dir(tmp_path, 10)]
    assert rundir.list_checkpoints(tmp_path) == [rundir.step_dir(tmp_path, s) for s in (5, 15, 20)]
    assert rundir.best_checkpoint(tmp_path) == rundir.step_dir(tmp_path, 5)
    assert rundir.latest_checkpoint(tmp_path) == rundir.step_dir(tmp_path, 20)
    assert not stray.exists()


@pytest.mark.parametrize("form", ["relative", "absolute", "through a symlink"])
def test_the_best_checkpoint_survives_pruning(
    form: str, tiny_train_data: Path, tmp_path: Path
) -> None:
    """A run whose validation gets worse after its best (the learning rate warms up to 1.0,
    far too high for AdamW), checkpointing every 5 steps and keeping 1: whatever form --out
    takes, the best checkpoint survives, `best` is a relative link to it, and the final report
    and the export name it."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    out = {"relative": "runs/x", "absolute": str(tmp_path / "abs"), "through a symlink": "link/x"}
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "--preset=tiny",
        f"--data={tiny_train_data}",
        f"--tokeniser={tiny_train_data / 'tokeniser.tkn'}",
        f"--out={out[form]}",
        "--max-steps=30",
        "--eval-every=5",
        "--save-every=5",
        "--keep=1",
        "--max-lr=1.0",
        "--warmup-steps=30",
        "--min-lr-ratio=1",
        "--samples=0",
        "--no-plot",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        command, cwd=tmp_path, env=env, check=True, capture_output=True, text=True
    )
    run = tmp_path / out[form]
    events = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    best_loss, best_step = min((e["value"], e["step"]) for e in events if e["kind"] == "val")
    assert best_step < 30, "validation never got worse: the test shows nothing"
    link = rundir.checkpoints_dir(run) / rundir.BEST_LINK
    assert os.readlink(link) == f"step_{best_step:07d}"  # relative, inside checkpoints/
    assert ckpt.is_checkpoint(link)
    assert rundir.list_checkpoints(run)[-1].name == "step_0000030"
    named = f"{out[form]}/checkpoints/step_{best_step:07d}"
    assert f"best {best_loss:.4f} ({named})" in done.stdout
    assert f"exported {named} as a Hugging Face model" in done.stdout
    exported = from_pretrained(run / "export").state_dict()
    best_model, _ = ckpt.load_model_dir(link)
    assert all(torch.equal(w, exported[k]) for k, w in best_model.state_dict().items())


def test_resume_refuses_another_batch_geometry(tiny_run_config) -> None:
    cfg = tiny_run_config(max_steps=5, samples=0)
    train(cfg)
    with pytest.raises(ValueError, match="checkpoint has batch_size=4, this run batch_size=2"):
        train(tiny_run_config(max_steps=8, batch_size=2, resume="latest", samples=0))


def train_command(data: Path, out: str | Path, *extra: str) -> list[str]:
    """A tiny run whose settings differ from the `tiny` preset's (learning rate, schedule,
    AdamW's betas and eps, cadence), so that a resume that fell back to the preset would show."""
    return [
        sys.executable,
        str(ROOT / "train.py"),
        *tiny_run_args(data, out),
        "--max-steps=100",
        "--max-lr=3e-3",
        "--warmup-steps=7",
        "--min-lr-ratio=0.2",
        "--beta2=0.99",
        "--eps=1e-6",
        "--weight-decay=0.05",
        "--save-every=10",
        "--eval-every=50",
        "--keep=2",
        "--samples=1",
        "--no-export",
        "--no-plot",
        *extra,
    ]


def train_losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [e["value"] for e in map(json.loads, lines) if e["kind"] == "train"]


# The modern family with Muon + AdamW and a WSD schedule, its settings off their defaults too.
MODERN = ("--model=modern-tiny", "--optimizer=muon", "--schedule=wsd", "--decay-frac=0.3")
MODERN += ("--muon-lr=0.03", "--muon-momentum=0.9", "--muon-weight-decay=0.01")
MODERN += ("--embed-lr=5e-3", "--head-lr=4e-3")


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe", [(), (*MODERN, "--deterministic")], ids=["gpt2-adamw", "modern-muon-deterministic"]
)
def test_resume_after_sigkill_is_bit_identical(
    tiny_train_data: Path, tmp_path: Path, recipe: tuple[str, ...]
) -> None:
    """Kill a run with SIGKILL once it wrote a checkpoint and resume it as a user would, from
    the working directory with the relative --out and nothing else (`--out runs/x --resume`):
    the saved settings come back, and the per-step losses, final weights and text log equal an
    uninterrupted run's, bit for bit. Both families and both optimizers (Muon's and AdamW's
    states restored exactly); --deterministic (which matters on GPUs) runs the whole path here
    and is restored by the resume like every other setting."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    whole, killed = tmp_path / "runs" / "whole", tmp_path / "runs" / "killed"
    subprocess.run(
        train_command(tiny_train_data, "runs/whole", *recipe),
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
    )

    proc = subprocess.Popen(
        train_command(tiny_train_data, "runs/killed", *recipe),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not any(s > 0 for s in _steps(killed)) and time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    resumed_at = max(_steps(killed))
    assert 0 < resumed_at < 100

    out = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--out", "runs/killed", "--resume"],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    assert "resumed from runs/killed/checkpoints/step_" in out.stdout
    assert "resume:" not in out.stdout  # nothing was stated, so nothing changed
    assert train_losses(killed) == train_losses(whole)  # exact float equality
    assert len(train_losses(whole)) == 100
    a = load_file(str(rundir.step_dir(whole, 100) / ckpt.WEIGHTS_FILE))
    b = load_file(str(rundir.step_dir(killed, 100) / ckpt.WEIGHTS_FILE))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the text log has each step once, as if the run had never stopped
    assert (killed / "log.txt").read_text() == (whole / "log.txt").read_text()


def _steps(run: Path) -> list[int]:
    return [train_state.load_training_state(p).step for p in rundir.list_checkpoints(run)]
