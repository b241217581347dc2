"""Bad numbers are refused up front: every numeric setting's range is checked when the
configuration is built (a flag, a config file, a checkpoint's saved settings on --resume), with
one line naming the setting, exit 2, before anything is written.

Before these checks `--seed -1` crashed in numpy after step_0000000 was written, and `--beta2 1.5`,
`--max-lr nan`, `--eps -1` ended in torch tracebacks.
"""

from __future__ import annotations

import dataclasses
import doctest
import json
import math
import typing
from pathlib import Path

import pytest

from gpt import config
from gpt.cli import UserError
from gpt.config import (
    MODEL_PRESETS,
    MODEL_RANGES,
    TRAIN_PRESETS,
    TRAIN_RANGES,
    GPTConfig,
    Range,
    TrainConfig,
    model_preset,
    train_preset,
)
from gpt.train import rundir
from tests.conftest import tiny_run_args
from tests.test_errors import TRAIN_FLAGS, run_command, user_error

# (flag, value, the one line's words): the five, then others of each kind of range.
BAD_FLAGS = [
    ("--seed", "-1", "--seed must be in [0, 18446744073709551615], got -1"),
    ("--beta2", "1.5", "--beta2 must be in [0, 1), got 1.5"),
    ("--max-lr", "nan", "--max-lr must be a finite number > 0, got nan"),
    ("--eps", "-1", "--eps must be > 0, got -1.0"),
    ("--weight-decay", "-0.1", "--weight-decay must be >= 0, got -0.1"),
    ("--max-lr", "inf", "--max-lr must be a finite number > 0, got inf"),
    ("--val-tokens", "0", "--val-tokens must be >= 1, got 0"),
]


@pytest.mark.parametrize(("flag", "value", "message"), BAD_FLAGS)
def test_bad_number_on_the_command_line_is_refused_before_anything_is_written(
    tiny_train_data: Path, tmp_path: Path, flag: str, value: str, message: str
) -> None:
    result = run_command(
        tmp_path, "train.py", *tiny_run_args(tiny_train_data, "runs/x"), *TRAIN_FLAGS, flag, value
    )
    assert user_error(result) == f"error: {message}"
    assert not (tmp_path / "runs").exists()


def test_bad_number_in_a_config_file_is_refused_naming_the_file(
    tiny_train_data: Path, tmp_path: Path
) -> None:
    (tmp_path / "run.toml").write_text('preset = "tiny"\nbeta2 = 1.5\n')
    data = tiny_train_data
    result = run_command(
        tmp_path, "train.py", "--config", "run.toml", f"--data={data}",
        f"--tokeniser={data / 'tokeniser.tkn'}", "--out=runs/x", *TRAIN_FLAGS,
    )  # fmt: skip
    assert user_error(result) == "error: run.toml: --beta2 must be in [0, 1), got 1.5"
    assert not (tmp_path / "runs").exists()


def test_bad_number_restored_by_a_bare_resume_is_refused_naming_the_checkpoint(
    tiny_train_data: Path, tmp_path: Path
) -> None:
    """A checkpoint saved with `--seed -1` (as the unchecked flag left step_0000000 behind):
    `--out DIR --resume` restores its settings and refuses them, writing nothing."""
    args = (*tiny_run_args(tiny_train_data, "runs/x"), *TRAIN_FLAGS, "--max-steps=2")
    assert run_command(tmp_path, "train.py", *args).returncode == 0
    run = tmp_path / "runs" / "x"
    checkpoint = rundir.step_dir(run, 2)
    config = checkpoint / "config.json"
    meta = json.loads(config.read_text())
    meta["training"]["train_config"]["seed"] = -1
    config.write_text(json.dumps(meta))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}

    result = run_command(tmp_path, "train.py", "--out", "runs/x", "--resume")

    line = user_error(result, "runs/x/checkpoints/step_0000002", "--seed must be in [0, ")
    assert line.endswith("got -1")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("beta1", 1.0),
        ("grad_clip", -1.0),
        ("min_lr_ratio", 1.5),
        ("decay_frac", 0.0),
        ("muon_momentum", 1.0),
        ("muon_lr", -1.0),
        ("embed_lr", math.nan),
        ("sample_temperature", -0.5),
        ("sample_seed", 2**64),
        ("peak_flops", 0.0),
        ("hellaswag_limit", 0),
        ("warmup_steps", -1),
    ],
)
def test_each_kind_of_range_is_refused(setting: str, value: float) -> None:
    with pytest.raises(UserError, match=f"^--{setting.replace('_', '-')} must be "):
        TrainConfig.from_dict({setting: value})


@pytest.mark.parametrize(
    ("cls", "ranges"), [(TrainConfig, TRAIN_RANGES), (GPTConfig, MODEL_RANGES)]
)
def test_every_numeric_setting_has_a_range(cls: type, ranges: dict[str, Range]) -> None:
    """A new int or float field cannot be added without saying which values it takes."""
    hints = typing.get_type_hints(cls)
    numeric = [
        f.name
        for f in dataclasses.fields(cls)
        if {int, float} & set(typing.get_args(hints[f.name]) or (hints[f.name],))
    ]
    assert list(ranges) == numeric  # field order: the first bad field is the one reported


@pytest.mark.parametrize("preset", list(TRAIN_PRESETS))
def test_every_recipe_is_in_range(preset: str) -> None:
    assert train_preset(preset).model in MODEL_PRESETS  # train_preset raises on a bad number


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("layer_norm_eps", math.nan, "GPTConfig.layer_norm_eps must be a finite number > 0"),
        ("rope_theta", math.inf, "GPTConfig.rope_theta must be a finite number > 0"),
        ("n_layer", 0, "GPTConfig.n_layer must be >= 1, got 0"),
    ],
)
def test_model_shape_ranges(field: str, value: float, message: str) -> None:
    with pytest.raises(UserError, match=f"^{message}"):
        model_preset("modern-tiny", **{field: value})


def test_range_ends_and_text() -> None:
    below_1 = Range(0, 1, high_open=True)
    assert 0.0 in below_1 and 0.999 in below_1 and 1.0 not in below_1 and -0.1 not in below_1
    assert 0.0 not in Range(0, 1, low_open=True) and 1 in Range(0, 1, low_open=True)
    assert math.inf not in Range(low=0) and 10**400 in Range(low=0)  # a huge int does not overflow
    assert str(Range(0, 1, low_open=True)) == "in (0, 1]" and str(Range(high=2)) == "<= 2"


def test_config_doctests() -> None:
    assert doctest.testmod(config).failed == 0
