"""Rates that hold across widths (gpt/train/recipe.py, `peak_rates`): the model's shape from the
command line (--n-layer, --n-embd, --n-head, --n-kv-head, --ffn-size), validated like every
setting; the width rule's arithmetic in the optimizer's groups and in the run's header; the presets
stating their rates at base width 256; and `bench/transfer.py --smoke`, the sweep that measures
whether the rates transfer, run as a user would."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt.cli import UserError
from gpt.config import TRAIN_PRESETS, TrainConfig, model_preset, train_preset
from gpt.model.families import build_model
from gpt.train.recipe import configure_optimizer, peak_rates
from tests.conftest import tiny_run_args
from tests.test_errors import TRAIN_FLAGS, run_command, user_error

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"model": "modern", "n_head": 7},
            "n_embd 768 (from --model modern) must be divisible by --n-head 7",
        ),
        (
            {"model": "modern-tiny", "n_embd": 48, "n_head": 3},
            "--n-head 3 must be a multiple of n_kv_head 2 (from --model modern-tiny)",
        ),
        (
            {"model": "modern", "n_embd": 96, "n_head": 32},
            "--n-embd 96 / --n-head 32 = 3: the head size must be even",
        ),
        (
            {"model": "gpt2", "n_kv_head": 4, "ffn_size": 1024},
            "--n-kv-head, --ffn-size: only for the modern family",
        ),
        ({"model": "modern", "n_layer": 0}, "--n-layer must be >= 1, got 0"),
    ],
)
def test_a_shape_that_does_not_fit_names_its_flags(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(UserError) as refused:
        TrainConfig(**overrides)  # type: ignore[arg-type]
    assert message in str(refused.value)


def test_a_bad_shape_on_the_command_line_is_one_line_and_writes_nothing(
    tiny_train_data: Path, tmp_path: Path
) -> None:
    args = tiny_run_args(tiny_train_data, "runs/x", preset="modern-tiny")
    result = run_command(
        tmp_path, "train.py", *args, *TRAIN_FLAGS, "--n-embd", "48", "--n-head", "5"
    )
    assert user_error(result) == "error: --n-embd 48 must be divisible by --n-head 5"
    assert not (tmp_path / "runs").exists()


def test_the_shape_flags_build_the_model_and_a_resume_keeps_them(
    tiny_train_data: Path, tmp_path: Path
) -> None:
    """A run 48 wide with 3 layers, 6 heads over 2 key/value heads and a 96-wide MLP, from
    another directory with a relative --out; its header names each group's rate under the rule
    (the head's 3e-2 x 256/48); a bare `--out DIR --resume` continues it, and a changed --n-layer
    on resume is refused."""
    args = (
        *tiny_run_args(tiny_train_data, "runs/m", preset="modern-tiny"), *TRAIN_FLAGS,
        "--max-steps=2",
    )  # fmt: skip
    shape = ("--n-layer=3", "--n-embd=48", "--n-head=6", "--n-kv-head=2", "--ffn-size=96")
    first = run_command(tmp_path, "train.py", *args, *shape)
    assert first.returncode == 0, first.stderr
    run = tmp_path / "runs" / "m"
    model = json.loads((run / "config.json").read_text())["model"]
    assert (model["n_layer"], model["n_embd"], model["n_head"]) == (3, 48, 6)
    assert (model["n_kv_head"], model["ffn_size"]) == (2, 96)
    header = (
        "rates at width 48 (stated at 256): matrices 0.02 (Muon), embeddings 0.1, "
        "head 0.16 (x 256/48), gains 0.03"
    )
    assert header in first.stdout

    resumed = run_command(tmp_path, "train.py", "--out=runs/m", "--resume", "--max-steps=3")
    assert resumed.returncode == 0, resumed.stderr
    assert "step_0000003" in {p.name for p in (run / "checkpoints").iterdir()}
    changed = run_command(tmp_path, "train.py", "--out=runs/m", "--resume", "--n-layer=2")
    assert "n_layer fixes the model" in user_error(changed, "n_layer 2 (command line)")


def test_optimizer_groups_take_the_rule_s_rates() -> None:
    """The peaks the optimizer's groups carry are `peak_rates`': at width 64 the head's rate is
    4x the stated one (base 256), the others are as stated; without a base width all four are."""
    cfg = train_preset("modern-tiny", n_embd=64, n_head=8, n_kv_head=4)
    model = build_model(model_preset("modern-tiny", **cfg.shape_overrides()))
    for base_width, head in ((256, 4 * cfg.head_lr), (None, cfg.head_lr)):
        run_cfg = TrainConfig.from_dict({**cfg.to_dict(), "base_width": base_width})
        groups = configure_optimizer(model, run_cfg, torch.device("cpu")).param_groups
        peaks = {g["name"]: g["peak_lr"] for g in groups}
        assert peaks == peak_rates(run_cfg)
        assert math.isclose(peaks["head"], head)
        assert peaks["embeddings"] == cfg.embed_lr and peaks["matrices"] == cfg.muon_lr


def test_the_modern_presets_state_their_rates_at_width_256() -> None:
    """Every preset of the modern recipe takes the rule, stated at the width its rates were tuned
    at; `modern` (768 wide) thus trains its head at a third of the demo's rate."""
    modern = [name for name, preset in TRAIN_PRESETS.items() if preset.get("optimizer") == "muon"]
    assert {"modern", "modern-demo", "modern-tiny"} <= set(modern)
    assert all(train_preset(name).base_width == 256 for name in modern)
    assert math.isclose(peak_rates(train_preset("modern"))["head"], 1e-2)
    assert peak_rates(train_preset("modern-demo")) == {
        "matrices": 0.02, "embeddings": 0.1, "head": 0.03, "gains": 0.03,
    }  # fmt: skip


def test_transfer_smoke_from_another_directory(tmp_path: Path) -> None:
    """`bench/transfer.py --smoke --out runs/t` (relative, from another directory): every run's
    final loss in results.json, the table and the picture; a rerun trains nothing."""
    script = str(ROOT / "bench/transfer.py")
    command = [sys.executable, script, "--smoke", "--out", "runs/t", "--workers", "1"]
    first = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    results = json.loads((tmp_path / "runs/t/results.json").read_text())
    # widths 16 (both parametrisations) and 32 (one): 5 runs each; the check 3; depth 5; the
    # horizon 2 (6 steps, not 3)
    assert len(results) == 5 + 5 + 5 + 3 + 5 + 2
    longer, shorter = results["w32-l2-rule-all-x1-s6"], results["w32-l2-rule-all-x1"]
    assert longer["steps"] == 6 and longer["val"] != shorter["val"]
    assert all(math.isfinite(r["val"]) for r in results.values())
    assert "| rule     | adamw  | 16 x 2" in first.stdout
    assert "horizon, width 32, 6 steps: Muon x1 is" in first.stdout
    assert (tmp_path / "runs/t/transfer.png").stat().st_size > 10_000
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert "0 runs to train (25 already in runs/t/results.json)" in again.stdout
