"""Every command line is generated from one options dataclass (gpt/cli.py): `--help` lists each
field's flag with its default, and an unknown flag is one line `error: ...`, exit code 2.

Each command runs as a user runs it: a subprocess from the project root.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fineweb
import hellaswag
import inference
import tokeniser
from gpt import hf
from gpt.cli import count, option, parse_options

ROOT = Path(__file__).resolve().parent.parent

# (command line before the flags, its options dataclass, the arguments it requires)
COMMANDS = [
    (["fineweb.py"], fineweb.FinewebOptions, []),
    (["tokeniser.py"], tokeniser.TokeniserTrainingOptions, []),
    (["hellaswag.py"], hellaswag.HellaSwagOptions, ["-m", "x"]),
    (["inference.py"], inference.InferenceOptions, ["--model", "x"]),
    (["-m", "gpt.hf", "export"], hf.ExportOptions, ["ckpt", "out"]),
]
IDS = [" ".join(c[0]) for c in COMMANDS]


def run_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def entry(field: dataclasses.Field) -> str:
    """How --help names a field: its flag, or its name for a positional argument."""
    if field.metadata.get("positional"):
        return field.name
    return "--" + field.name.replace("_", "-")


def help_entries(help_text: str) -> list[tuple[list[str], str]]:
    """--help's arguments in order: (the names of one, its help in one line). argparse indents an
    argument's first line by 2 spaces and its continuation lines by more."""
    entries: list[tuple[list[str], str]] = []
    for line in help_text.splitlines():
        if re.match(r"  \S", line):
            names, _, text = line.strip().partition("  ")
            entries.append(([n.split(" ")[0] for n in names.split(", ")], text))
        elif entries and line.startswith("   "):
            entries[-1] = (entries[-1][0], f"{entries[-1][1]} {line.strip()}".strip())
    return entries


@pytest.mark.parametrize(("command", "options", "required"), COMMANDS, ids=IDS)
def test_help_lists_every_field_with_its_default(
    command: list[str], options: type, required: list[str]
) -> None:
    result = run_command(*command, "--help")
    assert result.returncode == 0, result.stderr
    entries = [e for e in help_entries(result.stdout) if "--help" not in e[0]]
    fields = dataclasses.fields(options)
    assert len(entries) == len(fields)
    for f, (names, text) in zip(fields, entries, strict=True):  # in field order
        assert entry(f) in names, (entry(f), names)
        if f.default is dataclasses.MISSING:
            assert text.endswith("(required)"), text
        else:
            assert text.endswith(f"(default: {f.default})"), text


@pytest.mark.parametrize(("command", "options", "required"), COMMANDS, ids=IDS)
def test_unknown_flag_is_a_one_line_error(
    command: list[str], options: type, required: list[str]
) -> None:
    result = run_command(*command, *required, "--no-such-flag")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "unrecognized arguments: --no-such-flag" in lines[0]


@dataclasses.dataclass(kw_only=True)
class Example:
    """Options of every kind the generator handles."""

    name: str = option(short="-n")
    """A required string with a short flag."""
    size: int = option(1000, parse=count)
    """A count."""
    ratio: float | None = None
    """An optional float."""
    quiet: bool = False
    """A switch."""


def test_parse_options_keeps_defaults_and_reads_flags() -> None:
    assert parse_options(Example, ["-n", "a"], "x", "") == Example(name="a")
    argv = ["--name", "b", "--size", "2K", "--ratio", "0.5", "--quiet"]
    assert parse_options(Example, argv, "x", "") == Example(
        name="b", size=2000, ratio=0.5, quiet=True
    )
