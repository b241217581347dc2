"""train.py's command line: generated flags, presets, config files, precedence, clean errors."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from gpt.cli import UserError
from gpt.config import TRAIN_PRESETS, TrainConfig, train_preset
from gpt.train import rundir
from gpt.train import state as train_state
from gpt.train.recipe import lr_at

ROOT = Path(__file__).resolve().parent.parent


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_script = load_script()


def resolve(*argv: str) -> tuple[str, TrainConfig]:
    args = train_script.build_parser().parse_args(train_script.bare_resume(argv))
    preset, cfg, _ = train_script.resolve_config(args)
    return preset, cfg


def run_cli(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], text: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], lines


def test_help_lists_every_field_with_its_default() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    out = " ".join(result.stdout.split())  # argparse wraps lines
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        assert flag in out, flag
        assert f"(default: {f.default})" in out, f.name
    assert "--preset" in out and "--config" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--data", "/nonexistent/data"], "/nonexistent/data: data directory not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(argv: list[str], message: str) -> None:
    assert_one_line_error(run_cli("--preset", "tiny", *argv), message)


def test_bench_bad_model_is_one_line_error() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "train.py"), "--models", "demo,huge"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert_one_line_error(result, "unknown model 'huge'")


def test_flag_errors_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        resolve("--max-lr", "fast")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: argument --max-lr: invalid float value: 'fast'\n"
    with pytest.raises(ValueError, match="--warmup-steps must be >= 0"):
        resolve("--warmup-steps", "-1")


def test_presets_then_config_file_then_flags(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "tiny"\nmax_lr = 0.5\nbatch_size = 2\nsample_prompt = "Once"\n')
    preset, cfg = resolve("--config", str(toml), "--batch-size", "8")
    assert preset == "tiny"
    assert (cfg.model, cfg.max_lr, cfg.batch_size, cfg.sample_prompt) == ("tiny", 0.5, 8, "Once")
    assert cfg.seq_len == TRAIN_PRESETS["tiny"]["seq_len"]  # from the preset
    preset, cfg = resolve("--preset", "demo", "--config", str(toml))  # the flag wins
    assert preset == "demo" and cfg.model == "demo" and cfg.max_lr == 0.5
    preset, cfg = resolve()
    assert preset == "gpt2" and cfg == TrainConfig()


def test_config_file_errors_name_the_file(tmp_path: Path) -> None:
    bad_key = tmp_path / "bad_key.toml"
    bad_key.write_text("max_lr = 0.1\nlearning_rate = 0.1\n")
    with pytest.raises(ValueError, match=r"bad_key.toml: unknown TrainConfig keys: learning_rate"):
        resolve("--config", str(bad_key))
    bad_type = tmp_path / "bad_type.toml"
    bad_type.write_text('max_steps = "many"\n')
    with pytest.raises(ValueError, match=r"bad_type.toml: max_steps: expected int or null"):
        resolve("--config", str(bad_type))
    broken = tmp_path / "broken.toml"
    broken.write_text("max_lr = = 1\n")
    with pytest.raises(UserError, match=r"broken.toml: invalid TOML \(.*line 1"):
        resolve("--config", str(broken))
    with pytest.raises(UserError, match="missing.toml: no such file"):
        resolve("--config", str(tmp_path / "missing.toml"))


def tiny_run(data: Path, out: str, *extra: str) -> list[str]:
    """Flags of a short tiny run on `data` into `out` (relative to the working directory)."""
    return [
        "--preset=tiny",
        f"--data={data}",
        f"--tokeniser={data / 'tokeniser.tkn'}",
        f"--out={out}",
        "--max-steps=6",
        "--save-every=3",
        "--samples=0",
        "--no-export",
        "--no-plot",
        *extra,
    ]


def test_bare_resume_means_latest_of_the_run(
    tiny_train_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert train_script.main(tiny_run(tiny_train_data, "runs/t", "--max-lr=0.004")) == 0
    assert train_script.bare_resume(["--resume", "--out", "x"]) == ["--resume=latest", "--out", "x"]
    cfg = resolve("--out", "runs/t", "--resume")[1]
    assert (cfg.resume, cfg.max_lr, cfg.out, cfg.max_steps) == ("latest", 0.004, "runs/t", 6)
    # a checkpoint named directly resumes into its own run directory
    cfg = resolve("--resume", "runs/t/checkpoints/step_0000005")[1]
    assert (cfg.resume, cfg.out) == ("runs/t/checkpoints/step_0000005", "runs/t")
    with pytest.raises(UserError, match="--resume latest: no checkpoint in runs/none"):
        resolve("--out", "runs/none", "--resume")


def test_resume_announces_and_applies_each_stated_change(
    tiny_train_data: Path, tmp_path: Path
) -> None:
    """Settings stated at resume time (flags, a config file) are laid over the saved ones, one
    line each, and reach the optimizer: AdamW's restored state would otherwise keep its betas
    and weight decay."""
    first = run_cli(*tiny_run(tiny_train_data, "runs/t"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (tmp_path / "more.toml").write_text("weight-decay = 0.2\nmax_steps = 9\n")
    argv = ["--out", "runs/t", "--resume", "--config", "more.toml", "--max-lr", "0.005"]
    resumed = run_cli(*argv, "--beta2", "0.99", "--max-steps", "10", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    announced = [line for line in resumed.stdout.splitlines() if line.startswith("resume:")]
    assert sorted(announced) == [
        "resume: beta2 0.95 -> 0.99 (command line)",
        "resume: max_lr 0.01 -> 0.005 (command line)",
        "resume: max_steps 6 -> 10 (command line)",  # the flag wins over the file
        "resume: weight_decay 0.1 -> 0.2 (config file more.toml)",
    ]
    run = tmp_path / "runs" / "t"
    optimizer = torch.load(
        rundir.step_dir(run, 10) / train_state.OPTIMIZER_FILE, map_location="cpu", weights_only=True
    )
    decayed, plain = optimizer["param_groups"]
    assert tuple(decayed["betas"]) == (0.9, 0.99) and decayed["eps"] == 1e-8
    assert (decayed["weight_decay"], plain["weight_decay"]) == (0.2, 0.0)
    cfg = train_preset("tiny", max_lr=0.005, max_steps=10)
    events = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    lrs = {e["step"]: e["lr"] for e in events if e["kind"] == "train"}
    assert [lrs[s] for s in (6, 7, 8, 9)] == [lr_at(s, cfg, 10) for s in (6, 7, 8, 9)]
    assert json.loads((run / "config.json").read_text())["train"]["beta2"] == 0.99


@pytest.mark.parametrize(
    ("flag", "setting"),
    [("--batch-size=2", "batch_size"), ("--seed=7", "seed"), ("--model=demo", "model")],
)
def test_resume_refuses_a_setting_that_fixes_the_data_or_model(
    flag: str, setting: str, tiny_train_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert train_script.main(tiny_run(tiny_train_data, "runs/t", "--max-steps=3")) == 0
    result = run_cli("--out", "runs/t", "--resume", flag, cwd=tmp_path)
    assert_one_line_error(result, f"{setting} ")
    assert "a resumed run keeps it" in result.stderr


def test_presets_are_valid_and_scaled() -> None:
    for name in TRAIN_PRESETS:
        cfg = train_preset(name)
        assert cfg.total_batch_size % (cfg.batch_size * cfg.seq_len) == 0, name
    lrs = [train_preset(n).max_lr for n in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")]
    assert lrs == sorted(lrs, reverse=True)  # larger models, smaller learning rates


def test_a_run_from_the_command_line_saves_its_resolved_config(
    tiny_train_data: Path, tmp_path: Path
) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text("max_steps = 2\nsamples = 0\nexport = false\nplot = false\n")
    out = tmp_path / "run"
    argv = ["--preset", "tiny", "--config", str(toml), "--data", str(tiny_train_data)]
    argv += ["--tokeniser", str(tiny_train_data / "tokeniser.tkn"), "--out", str(out)]
    assert train_script.main([*argv, "--eval-every", "1"]) == 0
    saved = json.loads((out / "config.json").read_text())["train"]
    assert (saved["max_steps"], saved["eval_every"], saved["samples"]) == (2, 1, 0)
    with pytest.raises(ValueError, match="not a multiple of batch_size"):
        train_script.main([*argv, "--total-batch-size", "100"])
