"""--optimizer muon and --schedule wsd: parameter groups, the schedule, Muon's update against a
float64 hand computation, exact resume after SIGKILL, DDP and FSDP2 against one process, and
resume rules."""

from __future__ import annotations

import doctest
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from gpt import checkpoint as ckpt
from gpt.capability import describe, native_bfloat16
from gpt.config import TrainConfig, train_preset
from gpt.model.gpt2 import GPT
from gpt.train import recipe, rundir
from gpt.train import state as train_state
from gpt.train.loop import train
from gpt.train.optimizers import Muon, MuonAdamW, classify_parameters
from gpt.train.recipe import configure_optimizer, lr_at, set_lr
from tests.conftest import tiny_run_args

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
MUON = ("--optimizer=muon", "--schedule=wsd")


def train_command(data: Path, out: str | Path, *extra: str) -> list[str]:
    """train.py on the tiny preset with Muon and the WSD schedule (no export, no plots)."""
    return [
        sys.executable,
        str(ROOT / "train.py"),
        *tiny_run_args(data, out),
        "--no-export",
        "--no-plot",
        *MUON,
        *extra,
    ]


def events(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["kind"] == kind]


def values(run: Path, kind: str) -> list[float]:
    return [e["value"] for e in events(run, kind)]


def assert_one_line_error(result: subprocess.CompletedProcess[str], text: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], lines


# ----------------------------------------------------------------------------- groups


class Untied(nn.Module):
    """The shape of a model with an untied lm_head (the Qwen3 layout): embeddings, blocks with
    matrices and gains, a final norm, a head of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"norm": nn.RMSNorm(8), "proj": nn.Linear(8, 8)}) for _ in range(2)
        )
        self.norm = nn.RMSNorm(8)
        self.lm_head = nn.Linear(8, 10, bias=False)


def muon_cfg(**overrides: object) -> TrainConfig:
    return TrainConfig.from_dict({"optimizer": "muon", "schedule": "wsd", **overrides})


def test_groups_hold_every_parameter_once_and_muon_the_blocks_matrices(tiny_config) -> None:
    model = GPT(tiny_config)
    opt = configure_optimizer(model, muon_cfg(), CPU)
    assert isinstance(opt, MuonAdamW)
    grouped = [p for g in opt.param_groups for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped})
    assert {id(p) for p in grouped} == {id(p) for p in model.parameters()}
    assert [g["name"] for g in opt.param_groups] == ["matrices", "embeddings", "gains"]  # tied
    assert opt.muon.param_groups[0]["params"] == [
        p for p in model.blocks.parameters() if p.ndim == 2
    ]
    wte, wpe = model.transformer.wte.weight, model.transformer.wpe.weight
    assert opt.adamw.param_groups[0]["params"] == [wte, wpe]
    assert all(p.ndim == 1 for p in opt.adamw.param_groups[1]["params"])


def test_an_untied_head_has_its_own_group() -> None:
    model = Untied()
    kinds = classify_parameters(model)
    assert kinds["head"] == [model.lm_head.weight]
    assert kinds["embeddings"] == [model.embed.weight]
    assert kinds["matrices"] == [b["proj"].weight for b in model.blocks]
    gains = [model.blocks[0]["norm"].weight, model.blocks[0]["proj"].bias]
    assert kinds["gains"][:2] == gains and len(kinds["gains"]) == 5
    opt = configure_optimizer(model, muon_cfg(head_lr=3e-3, embed_lr=4e-3, max_lr=1e-3), CPU)
    peaks = {g["name"]: g["peak_lr"] for g in opt.param_groups}
    assert peaks == {"matrices": 0.02, "embeddings": 4e-3, "head": 3e-3, "gains": 1e-3}
    decay = {g["name"]: g["weight_decay"] for g in opt.param_groups}
    assert decay == {"matrices": 0.0, "embeddings": 0.1, "head": 0.1, "gains": 0.0}


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_every_group_follows_the_schedule_from_its_own_peak(schedule: str) -> None:
    cfg = muon_cfg(schedule=schedule, max_lr=1e-3, muon_lr=0.05, embed_lr=3e-3, warmup_steps=4)
    unit = muon_cfg(schedule=schedule, max_lr=1.0, warmup_steps=4)  # the factor itself
    opt = configure_optimizer(Untied(), cfg, CPU)
    for step in (0, 3, 10, 17, 19, 20, 30):
        factor = lr_at(step, unit, 20)
        assert 0 < factor <= 1
        set_lr(opt, step, cfg, 20)
        for group in opt.param_groups:
            assert group["lr"] == pytest.approx(group["peak_lr"] * factor, rel=1e-12)
        assert lr_at(step, cfg, 20) == pytest.approx(1e-3 * factor, rel=1e-12)  # the logged lr


def test_wsd_schedule_hand_worked() -> None:
    cfg = TrainConfig(max_lr=2.0, min_lr_ratio=0.25, warmup_steps=5, schedule="wsd", decay_frac=0.3)
    # 100 steps: warm-up (s + 1) / 5 x 2, flat at 2 until step 70, then a line to 0.5 at 100
    assert [lr_at(s, cfg, 100) for s in (0, 4, 5, 69, 70)] == [0.4, 2.0, 2.0, 2.0, 2.0]
    assert lr_at(85, cfg, 100) == pytest.approx(0.5 + 1.5 * 15 / 30)
    assert lr_at(99, cfg, 100) == pytest.approx(0.5 + 1.5 / 30)
    assert lr_at(100, cfg, 100) == lr_at(1000, cfg, 100) == 0.5
    assert doctest.testmod(recipe).failed == 0


# ----------------------------------------------------------------------------- Muon's update

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # torch.optim.Muon's defaults (Keller Jordan's)


def newton_schulz64(m: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Muon's orthogonalisation in float64: the wide orientation, Frobenius normalisation, then
    X <- aX + (bA + cA^2)X with A = XX^T, `steps` times."""
    a, b, c = NS_COEFFICIENTS
    x = m.double()
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


# Tolerances of Newton-Schulz against float64, from each dtype's unit roundoff u (round to
# nearest: u = 2^-p for a p-bit significand). Each of the 5 iterations rounds three products
# (XX^T, bA + cA^2, aX + ...X): 15 roundings that add up, to first order, to 15u of O's Frobenius
# norm. bfloat16 (p = 8): products accumulate in float32 and only the stored result is rounded,
# so 15u = 5.9e-2 (measured 1.5e-2 to 2.2e-2 for this shape over five seeds). float32 (p = 24):
# the sums themselves are rounded too, each of at most n = 64 terms (gamma_n = n u), so
# 15 n u = 5.7e-5 (measured ~1e-6); the float32 parameter update adds ~u ||W|| / ||lr O|| = 8u.
NS_TOLERANCE = {torch.bfloat16: 15 * 2.0**-8, torch.float32: 15 * 64 * 2.0**-24}


@pytest.mark.parametrize("ns_dtype", [torch.bfloat16, torch.float32], ids=str)
def test_muon_steps_match_a_float64_hand_computation(ns_dtype: torch.dtype) -> None:
    """Two steps on one tall matrix (64 x 16: transposed for Newton-Schulz, lr scaled by
    sqrt(64 / 16) = 2), the second with a momentum buffer, against Muon's documented update:
    B_t = mu B_{t-1} + g_t, Nesterov U = g_t + mu B_t, O = NS(U),
    W <- W (1 - lr wd) - lr sqrt(max(1, rows / cols)) O.
    (torch keeps B as an average, B_t = mu B_{t-1} + (1 - mu) g_t: a factor 1 - mu on U that
    NS's normalisation removes.) Both Newton-Schulz dtypes, to NS_TOLERANCE."""
    lr, wd, mu = 0.05, 0.1, 0.95
    gen = torch.Generator().manual_seed(0)
    w = nn.Parameter(torch.randn(64, 16, generator=gen) * 0.1)
    grads = [torch.randn(64, 16, generator=gen) for _ in range(2)]
    opt = Muon([w], ns_dtype, lr=lr, weight_decay=wd, momentum=mu, nesterov=True)
    buf = torch.zeros(64, 16, dtype=torch.float64)
    for g in grads:
        before = w.detach().double().clone()
        w.grad = g.clone()
        opt.step()
        buf = mu * buf + g.double()
        update = newton_schulz64(g.double() + mu * buf)
        expected = before * (1 - lr * wd) - lr * math.sqrt(64 / 16) * update
        step_error = (w.detach().double() - expected).norm() / (lr * 2 * update.norm())
        assert step_error < NS_TOLERANCE[ns_dtype], f"{step_error:.2e}"


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (24, 24)])
def test_bfloat16_newton_schulz_is_torch_muon_bit_for_bit(
    shape: tuple[int, int], nesterov: bool
) -> None:
    """In bfloat16 our Muon is torch.optim.Muon: three steps give identical parameters and
    momentum buffers (wide, tall and square; with and without Nesterov)."""
    gen = torch.Generator().manual_seed(1)
    start = torch.randn(*shape, generator=gen)
    grads = [torch.randn(*shape, generator=gen) for _ in range(3)]
    ours, theirs = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    settings = {"lr": 0.02, "weight_decay": 0.1, "momentum": 0.9, "nesterov": nesterov}
    opts = [
        Muon([ours], torch.bfloat16, **settings),
        torch.optim.Muon([theirs], **settings),
    ]
    for g in grads:
        for p, opt in zip((ours, theirs), opts, strict=True):
            p.grad = g.clone()
            opt.step()
    assert torch.equal(ours, theirs)
    assert torch.equal(
        opts[0].state[ours]["momentum_buffer"], opts[1].state[theirs]["momentum_buffer"]
    )


@pytest.mark.cpu_dependent
def test_newton_schulz_runs_in_the_devices_fast_dtype() -> None:
    """The run's Muon orthogonalises in bfloat16 exactly where the CPU multiplies it natively
    (gpt.capability, the predicate the code asks), in float32 elsewhere."""
    opt = configure_optimizer(Untied(), muon_cfg(), CPU)
    expected = torch.bfloat16 if native_bfloat16(CPU) else torch.float32
    assert opt.muon.ns_dtype == expected  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- runs


def test_resume_applies_a_new_muon_lr_and_refuses_another_optimizer(
    tiny_train_data: Path, tmp_path: Path
) -> None:
    first = ["--max-steps=6", "--save-every=3", "--samples=0"]
    done = subprocess.run(
        train_command(tiny_train_data, "runs/t", *first),
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    ns = "bfloat16" if native_bfloat16(CPU) else "float32"  # the header names the choice once
    header = f"{describe(CPU)} -> autocast float32, Newton-Schulz in {ns}"
    assert done.stdout.splitlines().count(header) == 1, done.stdout
    resume = [sys.executable, str(ROOT / "train.py"), "--out", "runs/t", "--resume"]
    more = ["--muon-lr", "0.01", "--max-steps", "8"]
    resumed = subprocess.run(resume + more, cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resume: muon_lr 0.02 -> 0.01 (command line)" in resumed.stdout.splitlines()
    state = torch.load(
        rundir.step_dir(tmp_path / "runs" / "t", 8) / train_state.OPTIMIZER_FILE,
        weights_only=True,
    )
    matrices = state["muon"]["param_groups"][0]
    cfg = train_preset("tiny", optimizer="muon", schedule="wsd", max_steps=8, muon_lr=0.01)
    assert (matrices["name"], matrices["peak_lr"]) == ("matrices", 0.01)
    assert matrices["lr"] == lr_at(7, cfg, 8, peak=0.01)  # set at the last step, step 7

    refused = subprocess.run(
        resume + ["--optimizer", "adamw"], cwd=tmp_path, env=ENV, capture_output=True, text=True
    )
    assert_one_line_error(refused, "optimizer 'adamw' (command line)")


def test_a_checkpoint_older_than_the_optimizer_setting_resumes(tiny_run_config) -> None:
    """A checkpoint whose saved settings predate `optimizer` (and the other new fields) was
    trained with AdamW and the cosine schedule: it resumes as such."""
    train(tiny_run_config(max_steps=3, save_every=3, samples=0))
    run = Path(tiny_run_config().out)
    meta_file = rundir.step_dir(run, 3) / ckpt.CONFIG_FILE
    meta = json.loads(meta_file.read_text())
    new = ("optimizer", "schedule", "decay_frac", "muon_lr", "muon_momentum")
    new += ("muon_weight_decay", "embed_lr", "head_lr")
    meta["training"]["train_config"] = {
        k: v for k, v in meta["training"]["train_config"].items() if k not in new
    }
    meta_file.write_text(json.dumps(meta))
    train(tiny_run_config(max_steps=4, samples=0, resume="latest"))
    assert len(values(run, "train")) == 4
