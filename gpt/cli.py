"""Command-line plumbing shared by the entry points: dataclass-generated flags and clean errors.

Every command is one options dataclass whose fields, with their docstrings as help, become the
flags (`add_dataclass_args`, `parse_options`); `--help` lists each with its default. Bad input
exits with code 2 and one line on stderr (no traceback), a full disk with code 1 and one line:

    >>> def main(argv=None): raise UserError("no such file: x.bin")
    >>> run(main)  # prints "error: no such file: x.bin", exits 2  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import errno
import inspect
import re
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

Options = TypeVar("Options")

COUNT_SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9}
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# Characters of a file's content that an error message may quote (see `excerpt`).
EXCERPT_CHARS = 20


class UserError(ValueError):
    """Bad user input (a flag, a config file, data, a checkpoint, a tokeniser, a model folder):
    reported as one line naming the file (and line), exit code 2. Every other exception is a bug
    and keeps its traceback. A ValueError, so that library callers may catch either."""


class DiskFullError(Exception):
    """The disk filled up while a file was written (gpt/fsio.py's writers raise it, naming the
    file and the space left; the old content of the file stays): one line, exit code 1, as it
    is neither the user's input nor a bug. Not an OSError, so that no caller mistakes it for a
    missing or unreadable file."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors (unknown flag, bad value) are one line `error: ...`, exit code 2,
    without argparse's usage block."""

    def error(self, message: str) -> NoReturn:
        fail(message)


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """How an error message quotes a value read from a file: at most `limit` characters,
    escaped as repr escapes them (no newline, terminal control code or other invisible character
    gets through), "..." where cut. A file may hold anything, a secret that a crafted path led us
    to included: a message shows enough to recognise the value, never the whole of it.

    >>> print(excerpt("HF_TOKEN=hf_0123456789abcdef\\n"), excerpt("a\\x1b[2J"), excerpt(2.5))
    'HF_TOKEN=hf_01234567'... 'a\\x1b[2J' 2.5
    """
    if isinstance(value, str):
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    text = repr(value)
    return text[:limit] + ("..." if len(text) > limit else "")


def fail(message: str, code: int = 2) -> NoReturn:
    """Print `error: message` on stderr and exit with `code` (2: the user's input)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def run(
    main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None
) -> NoReturn:
    """Call `main(argv)`; user errors become one line on stderr and exit code 2; a full disk
    (DiskFullError, or ENOSPC from a write outside gpt/fsio.py) one line and exit code 1."""
    try:
        code = main(argv)
    except UserError as e:
        fail(str(e) or type(e).__name__)
    except DiskFullError as e:
        fail(str(e), code=1)
    except OSError as e:
        if e.errno not in DISK_FULL_ERRNOS:
            raise
        what = f"{e.filename}: not written" if e.filename else "a write failed"
        fail(f"{what}, the disk is full ({e.strerror})", code=1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    raise SystemExit(code or 0)


def count(text: str) -> int:
    """A count such as 1000, 100M, 2.5B or 1e8 (a flag's value).

    >>> count("100M"), count("2.5K"), count("1e8")
    (100000000, 2500, 100000000)
    """
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([kKmMbBgG]?)\s*", text)
    try:
        value = float(m.group(1)) * COUNT_SUFFIXES[m.group(2).upper()] if m else -1.0
        if value >= 0 and value == int(value):
            return int(value)
    except (ValueError, OverflowError):
        pass
    raise argparse.ArgumentTypeError(f"not a count: {text!r} (e.g. 5000, 100M, 1e8)")


def option(
    default: Any = dataclasses.MISSING,
    *,
    short: str | None = None,
    parse: Callable[[str], Any] | None = None,
    positional: bool = False,
) -> Any:
    """A dataclass field with command-line extras: a `short` flag ("-m"), a `parse` function
    for the value (e.g. `count`), or a `positional` argument instead of a flag."""
    extras = {"short": short, "parse": parse, "positional": positional}
    return dataclasses.field(default=default, metadata=extras)


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each dataclass field (the string literal after it), by field name;
    fields inherited from dataclass bases included, a subclass's docstring winning."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):  # no source file (an interactive class)
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _base_type(tp: Any) -> Any:
    """The non-None member of `X | None`, else `tp`."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    is_union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    return args[0] if is_union and len(args) == 1 else tp


def _value_kwargs(f: dataclasses.Field[Any], tp: Any) -> dict[str, Any]:
    """How argparse reads a non-bool field's value: its parse function, its Literal choices or
    its type (int, float, else str)."""
    if f.metadata.get("parse") is not None:
        return {"type": f.metadata["parse"], "metavar": f.name.upper()}
    if typing.get_origin(tp) is typing.Literal:
        return {"type": str, "choices": typing.get_args(tp)}
    return {"type": tp if tp in (int, float) else str, "metavar": f.name.upper()}


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Add one `--field-name` flag per dataclass field (or a positional argument, see `option`).
    Defaults are None so that explicit flags can be told apart from defaults; the dataclass
    default is shown in --help, and a field without one is a required flag."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        tp = _base_type(hints[f.name])
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        shown = "required" if required else f"default: {default}"
        help_text = f"{docs.get(f.name, '')} ({shown})".replace("%", "%%")
        if f.metadata.get("positional"):  # named in --help by its field name, as given
            kwargs = {k: v for k, v in _value_kwargs(f, tp).items() if k != "metavar"}
            group.add_argument(prefix + f.name, help=help_text, **kwargs)
            continue
        names = ["--" + prefix + f.name.replace("_", "-")]
        if f.metadata.get("short"):
            names.insert(0, f.metadata["short"])
        kwargs: dict[str, Any] = {"dest": prefix + f.name, "default": None, "help": help_text}
        if required:
            kwargs["required"] = True
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(_value_kwargs(f, tp))
        group.add_argument(*names, **kwargs)


def explicit_values(args: argparse.Namespace, cls: type, prefix: str = "") -> dict[str, Any]:
    """The fields of `cls` that were given explicitly on the command line."""
    out = {}
    for f in dataclasses.fields(cls):
        v = getattr(args, prefix + f.name, None)
        if v is not None:
            out[f.name] = v
    return out


def parse_options(
    cls: Callable[..., Options], argv: Sequence[str] | None, prog: str, description: str
) -> Options:
    """The options dataclass `cls` from the command line `argv` (None: sys.argv[1:]): explicit
    flags over the field defaults."""
    parser = ArgumentParser(prog=prog, description=description)
    add_dataclass_args(parser, cls)  # type: ignore[arg-type]
    return cls(**explicit_values(parser.parse_args(argv), cls))  # type: ignore[arg-type]
