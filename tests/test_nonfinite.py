"""Non-finite values never reach disk as good: a NaN or infinite loss stops the run before
anything is saved for its step, the message names a checkpoint whose loss was finite, and
metrics.jsonl stays strict JSON that every reader takes back.

Before: `--max-lr 1e30 --warmup-steps 0 --eval-every 1 --save-every 1` saved step 1 with a NaN
validation loss, called it the "Last good checkpoint", and metrics.jsonl held a bare `NaN`.
"""

from __future__ import annotations

import doctest
import json
import math
from pathlib import Path
from typing import Any

import pytest

from gpt import runlog
from gpt.cli import UserError
from gpt.plot import load_run
from gpt.runlog import (
    METRICS_FILE,
    TEXT_LOG_FILE,
    decode_record,
    encode_record,
    format_record,
    read_events,
    read_records,
)
from gpt.train import rundir
from gpt.train.logs import truncate_logs
from tests.conftest import tiny_run_args
from tests.test_errors import TRAIN_FLAGS, run_command

# A learning rate that makes step 1's weights give a NaN loss (step 0's are finite).
DIVERGE = ("--max-lr=1e30", "--warmup-steps=0", "--save-every=1")
GOOD = "runs/nan/checkpoints/step_0000000"


def strict_json(line: str) -> Any:
    """json.loads that refuses NaN and Infinity, as RFC 8259, jq and JavaScript do."""

    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(line, parse_constant=refuse)


def diverge(data: Path, cwd: Path, eval_every: int) -> tuple[str, Path]:
    """Run the diverging tiny recipe from `cwd` into runs/nan: (its one error line, the run)."""
    args = (*tiny_run_args(data, "runs/nan"), *TRAIN_FLAGS, *DIVERGE)
    result = run_command(cwd, "train.py", *args, f"--eval-every={eval_every}")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0], cwd / "runs" / "nan"


def test_nan_validation_loss_stops_the_run_before_its_checkpoint(
    tiny_train_data: Path, tmp_path: Path
) -> None:
    line, run = diverge(tiny_train_data, tmp_path, eval_every=1)

    assert line.startswith("error: non-finite validation loss (nan) at step 1")
    assert (
        f"Last checkpoint with a finite loss: {GOOD}; resume from it with --resume {GOOD}" in line
    )
    assert [p.name for p in rundir.list_checkpoints(run)] == ["step_0000000"]
    lines = (run / METRICS_FILE).read_text().splitlines()
    records = [strict_json(x) for x in lines]  # every line is JSON
    assert records[-1] == {
        "step": 1, "tokens": 256, "kind": "val", "value": None, "nonfinite": {"value": "nan"},
    }  # fmt: skip
    event = read_events(run / METRICS_FILE)[-1]
    assert event[:3] == (1, 256, "val") and math.isnan(event[3])
    assert (run / TEXT_LOG_FILE).read_text().splitlines()[-1] == " 1 (256) val nan"
    val_tokens, _ = load_run(run).get("val")  # the plots leave the NaN out
    assert val_tokens.tolist() == [128.0]

    # The advice works: resumed from the named checkpoint at a sane rate, the run finishes, and
    # the NaN of the abandoned step leaves the log.
    resumed = run_command(
        tmp_path, "train.py", "--out", "runs/nan", "--resume", GOOD, "--max-lr=1e-2",
        "--max-steps=2",
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    records = read_records(run / METRICS_FILE)
    assert all(math.isfinite(r["value"]) for r in records)
    assert [r["step"] for r in records if r["kind"] == "val"] == [0, 1, 2]


def test_nan_loss_before_an_unevaluated_checkpoint_stops_the_run_unsaved(
    tiny_train_data: Path, tmp_path: Path
) -> None:
    """No validation at step 1, but a checkpoint is due: the weights are checked on the step's
    first training batch before it is written (they are finite, ~1e30, and give a NaN loss)."""
    line, run = diverge(tiny_train_data, tmp_path, eval_every=5)

    assert line.startswith("error: non-finite loss (nan) at step 1")
    assert f"Last checkpoint with a finite loss: {GOOD}" in line
    assert [p.name for p in rundir.list_checkpoints(run)] == ["step_0000000"]
    for x in (run / METRICS_FILE).read_text().splitlines():
        strict_json(x)


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_a_record_round_trips_through_strict_json(number: float) -> None:
    record = {"step": 3, "tokens": 96, "kind": "train", "value": 2.5, "grad_norm": number}
    line = encode_record(record)
    assert strict_json(line)["grad_norm"] is None
    back = decode_record(line)
    assert back.keys() == record.keys() and back["value"] == 2.5
    assert math.isnan(back["grad_norm"]) if math.isnan(number) else back["grad_norm"] == number


def write_metrics(run: Path, *lines: str) -> Path:
    run.mkdir()
    path = run / METRICS_FILE
    path.write_text("".join(x + "\n" for x in (json.dumps(format_record()), *lines)))
    return path


def test_readers_take_an_older_bare_nan_and_refuse_a_bad_flag(tmp_path: Path) -> None:
    path = write_metrics(
        tmp_path / "old",
        '{"step": 0, "tokens": 8, "kind": "val", "value": 5.0}',
        '{"step": 1, "tokens": 16, "kind": "val", "value": NaN}',
    )
    assert math.isnan(read_records(path)[-1]["value"])
    bad = write_metrics(
        tmp_path / "bad", '{"step": 1, "tokens": 16, "kind": "val", "value": null, "nonfinite": 1}'
    )
    with pytest.raises(UserError, match=f"{bad}:2: expected a JSON object"):
        read_events(bad)


def test_resume_truncation_keeps_strict_lines(tmp_path: Path) -> None:
    val = {"tokens": 8, "kind": "val"}
    path = write_metrics(
        tmp_path / "run",
        encode_record({"step": 1, **val, "value": math.inf}),
        encode_record({"step": 3, **val, "value": math.nan}),
        '{"step": 3, "tok',  # half-written
    )
    truncate_logs(tmp_path / "run", 2)
    lines = path.read_text().splitlines()
    assert [strict_json(x).get("step") for x in lines] == [None, 1]
    assert read_records(path)[0]["value"] == math.inf


def test_runlog_doctests() -> None:
    assert doctest.testmod(runlog).failed == 0
