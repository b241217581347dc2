"""Command-line plumbing shared by the entry points: dataclass-generated flags and clean errors.

Every command exits with code 2 and one line on stderr (no traceback) on bad input:

    >>> def main(argv=None): raise UserError("no such file: x.bin")
    >>> run(main)  # prints "error: no such file: x.bin", exits 2  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, NoReturn


class UserError(ValueError):
    """Bad user input (a flag, a config file, data, a checkpoint, a tokeniser, a model folder):
    reported as one line naming the file (and line), exit code 2. Every other exception is a bug
    and keeps its traceback. A ValueError, so that library callers may catch either."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors (unknown flag, bad value) raise UserError: one line, exit 2."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message}")


def fail(message: str) -> NoReturn:
    """Print `error: message` on stderr and exit with code 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run(
    main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None
) -> NoReturn:
    """Call `main(argv)`; user errors become one line on stderr and exit code 2."""
    try:
        code = main(argv)
    except UserError as e:
        fail(str(e) or type(e).__name__)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    raise SystemExit(code or 0)


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each dataclass field (the string literal after it), by field name."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
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


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Add one `--field-name` flag per dataclass field; defaults are None so that explicit flags
    can be told apart from defaults (the dataclass default is shown in --help)."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        flag = "--" + prefix + f.name.replace("_", "-")
        tp = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f"{docs.get(f.name, '')} (default: {default})"
        if tp is bool:
            group.add_argument(
                flag,
                dest=prefix + f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            conv = tp if tp in (int, float, str) else str
            group.add_argument(
                flag,
                dest=prefix + f.name,
                type=conv,
                default=None,
                metavar=f.name.upper(),
                help=help_text,
            )


def explicit_values(args: argparse.Namespace, cls: type, prefix: str = "") -> dict[str, Any]:
    """The fields of `cls` that were given explicitly on the command line."""
    out = {}
    for f in dataclasses.fields(cls):
        v = getattr(args, prefix + f.name, None)
        if v is not None:
            out[f.name] = v
    return out
