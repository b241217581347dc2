"""The files a training run logs, as a format: names, versions, and the readers.

    python -m gpt.plot runs/gpt2        # reads a run's metrics.jsonl (or log.txt) through here

A run directory holds (written by gpt/train/logs.py's RunLogger, on rank 0):
    metrics.jsonl   one JSON object per line. The first line of a file written by this version
                    names the format, {"kind": "format", "format": "gpt-alpha-metrics",
                    "version": 1}; then one event per line, {"step", "tokens", "kind", "value",
                    ...extras}. Files without the format line (older runs) are version 1.
    log.txt         the seed's text log, unversioned and unchanged so that runs and the reference
                    logs compare line for line: `STEP (TOKENS) KIND VALUE` for the numeric kinds
                    train, val, hella and ckpt, e.g. `100 (52953088) val 6.6388`.
The readers live in this low layer so that every reader shares them: the plots (gpt/plot.py), a
model card's HellaSwag line (gpt/hf_card.py), the trainer's resume truncation and bench/.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from gpt.cli import UserError

METRICS_FILE = "metrics.jsonl"
TEXT_LOG_FILE = "log.txt"
METRICS_FORMAT = "gpt-alpha-metrics"
METRICS_VERSION = 1
FORMAT_KIND = "format"  # the kind of metrics.jsonl's first record, which names the format
LOG_KINDS = ("train", "val", "hella", "ckpt")  # the seed's text log holds these

Event = tuple[int, int, str, Any]
"""(step, tokens, kind, value): one logged event, from either file."""
T = TypeVar("T")


def format_record() -> dict[str, Any]:
    """metrics.jsonl's first record."""
    return {"kind": FORMAT_KIND, "format": METRICS_FORMAT, "version": METRICS_VERSION}


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
    return _read_lines(path, parse)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file, each with its extras (a train record's lr,
    grad_norm, dt_ms, tok_s, ...), in file order; the format record is checked, not returned."""

    def parse(line: str, where: str) -> dict[str, Any] | None:
        return json.loads(line) if _parse_metrics_line(line, where) is not None else None

    return _read_lines(path, parse)


def _read_lines(path: Path, parse: Callable[[str, str], T | None]) -> list[T]:
    """parse(line, "FILE:LINE") of each non-blank line of path, the Nones left out."""
    items: list[T] = []
    try:
        # Bytes that are not UTF-8 become U+FFFD: such a line then fails to parse, naming its line.
        with path.open(encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    item = parse(line, f"{path}:{lineno}")
                    if item is not None:
                        items.append(item)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    return items


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
