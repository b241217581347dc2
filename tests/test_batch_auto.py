"""`--batch-size auto` (gpt/train/batch.py): the largest micro-batch that fits, the tokens of a
step kept by the accumulation, the choice saved with the run and kept by a bare resume.

A GPU is simulated on CPU: the probe's forward and backward raise torch.OutOfMemoryError above
a given number of rows (and run for real below it)."""

from __future__ import annotations

import doctest
import json
import shutil
from pathlib import Path

import pytest
import torch

from gpt.cli import UserError
from gpt.config import model_preset
from gpt.distributed import DistEnv
from gpt.train import batch, rundir
from gpt.train.loop import train
from tests.conftest import tiny_run_args
from tests.test_errors import TRAIN_FLAGS, run_command, user_error

CPU = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def device_failing_above(limit: int, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make the probe run on CPU as on a GPU where a micro-step of more than `limit` rows runs
    out of memory; the sizes it tries are appended to the list returned."""
    tried: list[int] = []
    real = batch.forward_backward

    def forward_backward(model, rows: int, seq_len: int, dtype: torch.dtype) -> None:
        tried.append(rows)
        if rows > limit:
            raise torch.OutOfMemoryError(f"simulated: {rows} rows do not fit")
        real(model, rows, seq_len, dtype)

    monkeypatch.setattr(batch, "PROBED_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(batch, "forward_backward", forward_backward)
    return tried


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def train_losses(run: Path) -> list[float]:
    events = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [e["value"] for e in events if e["kind"] == "train"]


@pytest.mark.parametrize(
    ("rows", "limit", "tried", "size"),
    [(16, 5, [16, 8, 4], 4), (12, 5, [12, 6, 3], 3)],
)
def test_a_device_that_fails_above_n_rows_gets_the_largest_size_that_fits(
    tiny_run_config, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    tmp_path: Path, rows: int, limit: int, tried: list[int], size: int,
) -> None:  # fmt: skip
    """Halving to sizes that split the step (12 rows: 12, 6, 3), the accumulation making up the
    step's tokens, the choice in the run's header, config.json and the checkpoint; and the run
    is the run of that size stated explicitly, loss for loss and weight for weight."""
    probed = device_failing_above(limit, monkeypatch)
    common = {"total_batch_size": rows * 32, "max_steps": 3, "eval_every": 3, "samples": 0}
    auto = tiny_run_config(batch_size="auto", out=str(tmp_path / "auto"), **common)
    train(auto)
    assert probed == tried

    run = tmp_path / "auto"
    config = read_json(run / "config.json")
    assert config["train"]["batch_size"] == size
    assert config["grad_accum_steps"] == rows // size
    how = ", ".join([*(f"{s} out of memory" for s in tried[:-1]), f"{size} fits"])
    line = f"batch size auto: {size} sequences a micro-batch x {rows // size} micro-step"
    header = capsys.readouterr().out
    assert line in header and f"tried: {how})" in header
    saved = read_json(rundir.step_dir(run, 3) / "config.json")["training"]["train_config"]
    assert saved["batch_size"] == size

    stated = tiny_run_config(batch_size=size, out=str(tmp_path / "stated"), **common)
    train(stated)
    assert train_losses(run) == train_losses(tmp_path / "stated")
    weights = [
        rundir.step_dir(tmp_path / name, 3) / "model.safetensors" for name in ("auto", "stated")
    ]
    assert weights[0].read_bytes() == weights[1].read_bytes()


def test_when_not_even_one_sequence_fits_the_error_says_what_to_do(
    tiny_run_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    device_failing_above(0, monkeypatch)
    cfg = tiny_run_config(batch_size="auto")
    with pytest.raises(UserError, match="not even one sequence fits.*lower --seq-len") as error:
        batch.resolve_batch_size(cfg, model_preset("tiny"), CPU)
    assert "4 out of memory, 2 out of memory, 1 out of memory" in str(error.value)


def test_a_stated_size_is_kept_and_nothing_is_probed(
    tiny_run_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    probed = device_failing_above(1, monkeypatch)
    cfg = tiny_run_config(batch_size=2)
    assert batch.resolve_batch_size(cfg, model_preset("tiny"), CPU) == (cfg, None)
    assert probed == []


@pytest.mark.parametrize("preset", ["tiny", "modern-tiny"])
def test_activation_memory_is_what_a_forward_holds(preset: str) -> None:
    """The CPU budget's bytes a sequence adds: the growth, per sequence, of what the profiler
    sees allocated and not freed by a forward (the graph keeps it for the backward), plus the
    sequence's token ids, which the graph keeps too and which were allocated before."""
    model = batch.probe_model(model_preset(preset, pad_vocab_multiple=64), torch.device("cpu"))
    seq_len = 64

    def held(rows: int) -> int:
        idx = torch.zeros(rows, seq_len, dtype=torch.long)
        cpu = [torch.profiler.ProfilerActivity.CPU]
        with torch.profiler.profile(activities=cpu, profile_memory=True) as prof:
            out = model(idx, idx)
        del out
        return sum(e.cpu_memory_usage for e in prof.events() if e.cpu_parent is None)

    per_row, fixed = batch.activation_bytes(model, seq_len, torch.float32)
    ids = seq_len * 8  # int64
    assert per_row == held(2) - held(1) + ids == (held(8) - held(4)) // 4 + ids
    assert 0 <= fixed < per_row


def test_a_cpu_run_takes_the_largest_size_within_its_memory_budget(
    tiny_run_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Available memory set so that 4 of 16 rows fit in CPU_MEMORY_FRACTION of it, 8 not."""
    config = model_preset("tiny", pad_vocab_multiple=64, vocab_size=512)
    model = batch.probe_model(config, torch.device("cpu"))
    per_row, fixed = batch.activation_bytes(model, 32, torch.float32)
    base = sum(p.nbytes for p in model.parameters()) * (2 + batch.ADAMW_MOMENTS) + fixed
    available = (base + 6 * per_row) / batch.CPU_MEMORY_FRACTION
    monkeypatch.setattr(batch, "available_memory", lambda: int(available))
    cfg = tiny_run_config(batch_size="auto", total_batch_size=16 * 32)
    chosen, line = batch.resolve_batch_size(cfg, config, CPU)
    assert chosen.batch_size == 4 and line is not None
    assert line.startswith("batch size auto: 4 sequences a micro-batch x 4 micro-steps (cpu: ")
    monkeypatch.setattr(batch, "available_memory", lambda: int(base / batch.CPU_MEMORY_FRACTION))
    with pytest.raises(UserError, match="not even one sequence fits in memory"):
        batch.resolve_batch_size(cfg, config, CPU)


def test_auto_then_a_bare_resume_keeps_the_choice(tiny_train_data: Path, tmp_path: Path) -> None:
    """As a user: `train.py --batch-size auto` from another directory with a relative --out,
    stopped before its last checkpoint (that checkpoint deleted), then `--out DIR --resume`:
    the same size without probing again, the same losses; stating auto on the resume is
    refused in one line (batch_size fixes the data order)."""
    args = (*tiny_run_args(tiny_train_data, "runs/x"), *TRAIN_FLAGS)
    first = run_command(tmp_path, "train.py", *args, "--batch-size", "auto", "--max-steps", "4",
                        "--total-batch-size", "256", "--save-every", "2")  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    assert "batch size auto: 8 sequences a micro-batch x 1 micro-step (cpu: " in first.stdout
    run = tmp_path / "runs" / "x"
    losses = train_losses(run)
    shutil.rmtree(rundir.step_dir(run, 4))

    resumed = run_command(tmp_path, "train.py", "--out", "runs/x", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from runs/x/checkpoints/step_0000002" in resumed.stdout
    assert "batch size auto" not in resumed.stdout
    assert read_json(run / "config.json")["train"]["batch_size"] == 8
    saved = read_json(rundir.step_dir(run, 4) / "config.json")["training"]["train_config"]
    assert saved["batch_size"] == 8
    assert train_losses(run) == losses

    again = run_command(tmp_path, "train.py", "--out", "runs/x", "--resume", "--batch-size", "auto")
    assert "batch_size 8, and batch_size fixes the data order" in user_error(again, "'auto'")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("banana", "argument --batch-size: not a batch size: 'banana' (a number of sequences, "
                   "or auto)"),
        ("0", "--batch-size must be >= 1 or auto, got 0"),
        ("-3", "--batch-size must be >= 1 or auto, got -3"),
    ],
)  # fmt: skip
def test_a_bad_batch_size_is_one_line(
    tiny_train_data: Path, tmp_path: Path, value: str, message: str
) -> None:
    result = run_command(tmp_path, "train.py", *tiny_run_args(tiny_train_data, "runs/x"),
                         *TRAIN_FLAGS, "--batch-size", value)  # fmt: skip
    assert user_error(result) == f"error: {message}"
    assert not (tmp_path / "runs").exists()


def test_batch_doctests() -> None:
    assert doctest.testmod(batch).failed == 0
