"""A run's logs, both ways: `RunLogger` writes them during training, `read_events` reads them back
(for gpt/plot.py), `truncate_logs` cuts them back to a checkpoint before a resume.

Rank 0 writes, into the run directory:
    metrics.jsonl   one JSON object per line. The first line of a file written by this version
                    names the format, {"kind": "format", "format": "gpt-alpha-metrics",
                    "version": 1}; then one event per line, {"step", "tokens", "kind", "value",
                    ...extras}. Files without the format line (older runs) are version 1.
    log.txt         the seed's text log, unversioned and unchanged so that runs and the reference
                    logs compare line for line: `STEP (TOKENS) KIND VALUE` for the numeric kinds
                    train, val, hella and ckpt, e.g. `100 (52953088) val 6.6388`.
and the console (one line per step above a progress bar), TensorBoard and W&B when asked.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from gpt.cli import UserError
from gpt.config import TrainConfig
from gpt.fsio import write_text_atomic

METRICS_FILE = "metrics.jsonl"
TEXT_LOG_FILE = "log.txt"
METRICS_FORMAT = "gpt-alpha-metrics"
METRICS_VERSION = 1
FORMAT_KIND = "format"  # the kind of metrics.jsonl's first record, which names the format
LOG_KINDS = ("train", "val", "hella", "ckpt")  # the seed's text log holds these

Event = tuple[int, int, str, Any]
"""(step, tokens, kind, value): one logged event, from either file."""


# ----------------------------------------------------------------------------- writing


class RunLogger:
    """Rank 0's outputs: console lines (above a progress bar), RUN/metrics.jsonl, RUN/log.txt
    and, when asked, TensorBoard and Weights & Biases. On other ranks every method is a no-op."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, enabled: bool, fresh: bool) -> None:
        """`fresh`: a new run, whose logs replace any left by a run that never checkpointed;
        else the logs (truncated to the checkpoint: `truncate_logs`) are appended to."""
        self.enabled = enabled
        self.bar: tqdm[Any] | None = None
        self.tb: Any = None
        self.wandb: Any = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.tensorboard:
            self.tb = _tensorboard_writer(run_dir / "tensorboard")
        if cfg.wandb:
            self.wandb = _wandb_run(cfg, run_dir)
        mode = "w" if fresh else "a"
        self.metrics: TextIO = (run_dir / METRICS_FILE).open(mode, encoding="utf-8")
        self.text: TextIO = (run_dir / TEXT_LOG_FILE).open(mode, encoding="utf-8")
        if fresh:
            self._write_record(format_record())

    def start_progress(self, total: int, initial: int, show: bool) -> None:
        """A progress bar over the run's steps (with an ETA), when `show`."""
        if self.enabled and show:
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def print(self, message: str) -> None:
        """A console line (kept above the progress bar)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def advance(self) -> None:
        """One more step on the progress bar."""
        if self.bar is not None:
            self.bar.update(1)

    def event(self, step: int, tokens: int, kind: str, value: float | str, **extras: Any) -> None:
        """One event into metrics.jsonl (all kinds) and the seed's text log (numeric kinds)."""
        if not self.enabled:
            return
        self._write_record({"step": step, "tokens": tokens, "kind": kind, "value": value, **extras})
        if kind in LOG_KINDS and isinstance(value, float):
            self.text.write(f"{step:2d} ({tokens}) {kind} {value:.4f}\n")
            self.text.flush()
        if isinstance(value, float):
            if self.tb is not None:
                self.tb.add_scalar(kind, value, step)
            if self.wandb is not None:
                self.wandb.log({kind: value, "tokens": tokens}, step=step)

    def _write_record(self, record: dict[str, Any]) -> None:
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()

    def close(self) -> None:
        """Close the files, the progress bar and the optional loggers."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        self.metrics.close()
        self.text.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def format_record() -> dict[str, Any]:
    """metrics.jsonl's first record."""
    return {"kind": FORMAT_KIND, "format": METRICS_FORMAT, "version": METRICS_VERSION}


def _tensorboard_writer(log_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            "--tensorboard needs the tensorboard package: pip install tensorboard"
        ) from None
    return SummaryWriter(str(log_dir))


def _wandb_run(cfg: TrainConfig, run_dir: Path) -> Any:
    try:
        import wandb
    except ImportError:
        raise UserError("--wandb needs the wandb package: pip install wandb") from None
    return wandb.init(project=cfg.wandb_project, dir=str(run_dir), config=cfg.to_dict())


# ----------------------------------------------------------------------------- reading


def run_log(path: Path) -> Path:
    """The log to read for `path`: a run directory's metrics.jsonl, else its log.txt; a file as
    it is."""
    if path.is_dir():
        for candidate in (path / METRICS_FILE, path / TEXT_LOG_FILE):
            if candidate.is_file():
                return candidate
        raise UserError(f"{path}: no {METRICS_FILE} or {TEXT_LOG_FILE} in this run directory")
    if not path.is_file():
        raise UserError(f"no such run directory or log file: {path}")
    return path


def read_events(path: Path) -> list[Event]:
    """The events of a metrics.jsonl file (`.jsonl`) or a text log (anything else), in file
    order; a line that does not parse is a UserError naming it."""
    parse = _parse_metrics_line if path.suffix == ".jsonl" else _parse_text_line
    events: list[Event] = []
    try:
        # Bytes that are not UTF-8 become U+FFFD: such a line then fails to parse, naming its line.
        with path.open(encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    event = parse(line, f"{path}:{lineno}")
                    if event is not None:
                        events.append(event)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    return events


def parse_log_line(line: str) -> tuple[int, int, str, str]:
    """`STEP (TOKENS) KIND VALUE` -> (step, tokens, kind, value).

    >>> parse_log_line(" 100 (52953088) val 6.6388")
    (100, 52953088, 'val', '6.6388')
    """
    parts = line.split(maxsplit=3)
    if len(parts) != 4 or not (parts[1].startswith("(") and parts[1].endswith(")")):
        raise ValueError("expected `STEP (TOKENS) KIND VALUE`")
    return int(parts[0]), int(parts[1][1:-1]), parts[2], parts[3].strip()


def _parse_text_line(line: str, where: str) -> Event:
    try:
        return parse_log_line(line)
    except ValueError as e:  # parse_log_line's own, or int() of a bad number
        raise UserError(f"{where}: {e}: {line.strip()[:80]!r}") from None


def _parse_metrics_line(line: str, where: str) -> Event | None:
    """One metrics.jsonl line as an event; None for the format record (checked here)."""
    try:
        record = json.loads(line)
        kind = str(record["kind"])
        if kind != FORMAT_KIND:
            return int(record["step"]), int(record["tokens"]), kind, record["value"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise UserError(f"{where}: expected a JSON object with step, tokens, kind, value") from None
    _check_format(record, where)
    return None


def _check_format(record: dict[str, Any], where: str) -> None:
    if record.get("format") != METRICS_FORMAT or record.get("version") != METRICS_VERSION:
        raise UserError(
            f"{where}: metrics format {record.get('format')!r} version {record.get('version')!r};"
            f" this code reads {METRICS_FORMAT!r} version {METRICS_VERSION}"
        )


# ----------------------------------------------------------------------------- resuming


def truncate_logs(run_dir: Path, step: int) -> None:
    """Before resuming at `step`: drop what the interrupted run logged after its checkpoint
    (train events of steps >= step, anything of later steps, a half-written last line). The
    format record stays."""

    def keep(s: int, kind: str) -> bool:
        return s < step or (s == step and kind != "train")

    def keep_record(line: str) -> bool:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            return False
        return record["kind"] == FORMAT_KIND or keep(record["step"], record["kind"])

    def keep_text(line: str) -> bool:
        parts = line.split()
        return len(parts) == 4 and parts[0].isdigit() and keep(int(parts[0]), parts[2])

    _keep_lines(run_dir / METRICS_FILE, keep_record)
    _keep_lines(run_dir / TEXT_LOG_FILE, keep_text)


def _keep_lines(path: Path, keep: Callable[[str], bool]) -> None:
    """Rewrite `path` (atomically) with the lines that `keep` accepts; nothing if it is absent."""
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        write_text_atomic(path, "".join(line + "\n" for line in lines if keep(line)))
