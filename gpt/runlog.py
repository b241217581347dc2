"""The files a training run logs, as a format: names, versions, and the readers.

    python -m gpt.plot runs/gpt2        # reads a run's metrics.jsonl (or log.txt) through here

A run directory holds (written by gpt/train/logs.py's RunLogger, on rank 0):
    metrics.jsonl   one JSON object per line. The first line of a file written by this version
                    names the format, {"kind": "format", "format": "gpt-alpha-metrics",
                    "version": 1}; then one event per line, {"step", "tokens", "kind", "value",
                    ...extras}. Files without the format line (older runs) are version 1.
                    Strict JSON (RFC 8259, which jq and JavaScript read): a number that is not
                    finite is written as null and named in the record's "nonfinite" object,
                    {"value": null, "nonfinite": {"value": "nan"}}; the readers here give it
                    back as the float. (Older files may hold a bare NaN, which they read too.)
    log.txt         the seed's text log, unversioned and unchanged so that runs and the reference
                    logs compare line for line: `STEP (TOKENS) KIND VALUE` for the numeric kinds
                    train, val, hella and ckpt, e.g. `100 (52953088) val 6.6388`.
The readers live in this low layer so that every reader shares them: the plots (gpt/plot.py), a
model card's HellaSwag line (gpt/hf_card.py), the trainer's resume truncation and bench/.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from gpt.cli import UserError, excerpt

METRICS_FILE = "metrics.jsonl"
TEXT_LOG_FILE = "log.txt"
METRICS_FORMAT = "gpt-alpha-metrics"
METRICS_VERSION = 1
FORMAT_KIND = "format"  # the kind of metrics.jsonl's first record, which names the format
LOG_KINDS = ("train", "val", "hella", "ckpt")  # the seed's text log holds these
NONFINITE = "nonfinite"  # the field that names a record's fields whose number is not finite
NONFINITE_NAMES = ("nan", "inf", "-inf")  # str() of those numbers; float() gives them back

Event = tuple[int, int, str, Any]
"""(step, tokens, kind, value): one logged event, from either file."""
T = TypeVar("T")


def format_record() -> dict[str, Any]:
    """metrics.jsonl's first record."""
    return {"kind": FORMAT_KIND, "format": METRICS_FORMAT, "version": METRICS_VERSION}


def encode_record(record: dict[str, Any]) -> str:
    """One metrics.jsonl line (without its newline): strict JSON, each float that is not finite
    written as null and named in the record's "nonfinite" object.

    >>> encode_record({"kind": "val", "value": float("nan"), "n": 1})
    '{"kind": "val", "value": null, "n": 1, "nonfinite": {"value": "nan"}}'
    """
    flags = {
        key: str(value)
        for key, value in record.items()
        if isinstance(value, float) and not math.isfinite(value)
    }
    if flags:
        record = {**record, **dict.fromkeys(flags), NONFINITE: flags}
    return json.dumps(record, allow_nan=False)


def decode_record(line: str) -> dict[str, Any]:
    """A metrics.jsonl line as the record that was logged: the fields named in "nonfinite" get
    their number back (`encode_record`'s inverse). ValueError for a line that is not one.

    >>> decode_record('{"value": null, "nonfinite": {"value": "-inf"}}')
    {'value': -inf}
    """
    record = json.loads(line)
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    flags = record.pop(NONFINITE, {})
    if not isinstance(flags, dict) or not all(
        key in record and name in NONFINITE_NAMES for key, name in flags.items()
    ):
        raise ValueError(f"bad {NONFINITE!r} field: {flags!r}")
    return {**record, **{key: float(name) for key, name in flags.items()}}


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
    return _read_lines(path, _parse_record)


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
        raise UserError(f"{where}: {e}: {excerpt(line.strip())}") from None


def _parse_metrics_line(line: str, where: str) -> Event | None:
    """One metrics.jsonl line as an event; None for the format record (checked here)."""
    record = _parse_record(line, where)
    return None if record is None else _event(record)


def _event(record: dict[str, Any]) -> Event:
    """An event record's (step, tokens, kind, value); KeyError, TypeError or ValueError when
    it lacks one or has a step or token count that is not a number."""
    return int(record["step"]), int(record["tokens"]), str(record["kind"]), record["value"]


def _parse_record(line: str, where: str) -> dict[str, Any] | None:
    """One metrics.jsonl line as its event record (checked to make an event); None for the
    format record (checked here)."""
    try:
        record = decode_record(line)
        if record["kind"] != FORMAT_KIND:
            _event(record)
            return record
    except (KeyError, TypeError, ValueError):  # json.JSONDecodeError is a ValueError
        raise UserError(f"{where}: expected a JSON object with step, tokens, kind, value") from None
    _check_format(record, where)
    return None


def _check_format(record: dict[str, Any], where: str) -> None:
    if record.get("format") != METRICS_FORMAT or record.get("version") != METRICS_VERSION:
        raise UserError(
            f"{where}: metrics format {excerpt(record.get('format'))} version "
            f"{excerpt(record.get('version'))};"
            f" this code reads {METRICS_FORMAT!r} version {METRICS_VERSION}"
        )
