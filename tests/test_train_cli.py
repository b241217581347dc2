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

from gpt.config import TRAIN_PRESETS, TrainConfig, train_preset

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
    return train_script.resolve_config(args)


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *argv], capture_output=True, text=True, env=env
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
    with pytest.raises(ValueError, match="warmup_steps must be >= 0"):
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
    with pytest.raises(ValueError, match="broken.toml: invalid TOML"):
        resolve("--config", str(broken))
    with pytest.raises(FileNotFoundError):
        resolve("--config", str(tmp_path / "missing.toml"))


def test_bare_resume_means_latest() -> None:
    assert resolve("--resume")[1].resume == "latest"
    assert resolve("--resume", "--preset", "tiny")[1].resume == "latest"
    assert resolve("--resume", "runs/x/checkpoints/step_0000100")[1].resume.endswith("0100")


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
