"""Tokenise fineweb-edu (or any corpus) into validated token shards for training.

    python fineweb.py                          # fineweb-edu sample-10BT -> cache/fineweb_edu_10B
    python fineweb.py --source python-docs     # offline: the docs inside Python
    python fineweb.py --source texts/ --tokeniser gpt.tkn --shard-size 10M --out cache/mine

Interrupted, the same command resumes where it stopped. See gpt/data/prepare.py for the details and
gpt/data/shards.py for the output format. The full sample-10BT gives 100 shards of 100M GPT-2 tokens
(the first is the val split), as the seed did.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from gpt.cli import UserError, run
from gpt.data.prepare import prepare_dataset
from gpt.data.sources import FINEWEB_EDU, add_source_args, documents_from_args, source_name
from gpt.data.tokeniser import add_tokeniser_args

SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9}


def count(text: str) -> int:
    """A count such as 1000, 100M, 2.5B or 1e8.

    >>> count("100M"), count("2.5K"), count("1e8")
    (100000000, 2500, 100000000)
    """
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([kKmMbBgG]?)\s*", text)
    try:
        value = float(m.group(1)) * SUFFIXES[m.group(2).upper()] if m else -1.0
        if value >= 0 and value == int(value):
            return int(value)
    except (ValueError, OverflowError):
        pass
    raise argparse.ArgumentTypeError(f"not a count: {text!r} (e.g. 5000, 100M, 1e8)")


def default_out(args: argparse.Namespace) -> Path:
    """cache/fineweb_edu_10B for fineweb-edu sample-10BT (as the seed), else cache/<source>."""
    if args.source == "fineweb-edu" and args.dataset is None:
        size = source_name(args).removeprefix("sample-").removesuffix("T")
        return Path("cache") / f"fineweb_edu_{size}"
    if args.dataset is not None:
        return Path("cache") / re.sub(r"[^\w.-]+", "_", args.dataset)
    return Path("cache") / (Path(args.source).stem or "data")


def source_label(args: argparse.Namespace) -> str:
    """What the manifest records as the source."""
    if args.source == "fineweb-edu":
        name = source_name(args)
        return f"{args.dataset or FINEWEB_EDU}" + (f" ({name})" if name else "")
    if args.source == "python-docs":
        return "python-docs"
    return str(Path(args.source).resolve())


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (`error: ...`, exit code 2) via gpt.cli.run."""

    def error(self, message: str) -> NoReturn:
        raise UserError(message)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _Parser(
        description="Tokenise a corpus into token shards and a manifest (resumable).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_source_args(parser)
    add_tokeniser_args(parser)
    out = parser.add_argument_group("output")
    out.add_argument(
        "--out",
        type=Path,
        default=None,
        help="data directory; None: cache/fineweb_edu_10B for fineweb-edu sample-10BT, else "
        "cache/<source name>",
    )
    out.add_argument(
        "--shard-size",
        type=count,
        default=100_000_000,
        help="tokens per shard at most",
    )
    out.add_argument(
        "--val-tokens",
        type=count,
        default=None,
        help="tokens of the val split, taken first; None: one shard, 0: no val split",
    )
    out.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="tokenising processes",
    )
    out.add_argument("--max-docs", type=count, default=None, help="stop after this many documents")
    out.add_argument(
        "--max-tokens",
        type=count,
        default=None,
        help="stop once this many tokens are written",
    )
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    out = args.out or default_out(args)
    manifest = prepare_dataset(
        documents_from_args(args),
        out,
        args.tokeniser,
        shard_size=args.shard_size,
        val_tokens=args.val_tokens,
        workers=args.workers,
        max_docs=args.max_docs,
        max_tokens=args.max_tokens,
        source=source_label(args),
        progress=not args.quiet,
    )
    splits = {
        split: sum(s["tokens"] for s in manifest["shards"] if s["split"] == split)
        for split in ("train", "val")
    }
    print(
        f"{out}: {manifest['docs']:,} documents, {manifest['tokens']:,} tokens "
        f"(train {splits['train']:,}, val {splits['val']:,}) in {len(manifest['shards'])} shards "
        f"of {manifest['dtype']}, tokeniser {manifest['tokeniser_name']}"
    )
    return 0


if __name__ == "__main__":
    run(main)
