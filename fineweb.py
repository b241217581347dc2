"""Tokenise fineweb-edu (or any corpus) into validated token shards for training.

    python fineweb.py                          # fineweb-edu sample-10BT -> cache/fineweb_edu_10B
    python fineweb.py --source python-docs     # offline: the docs inside Python
    python fineweb.py --source texts/ --tokeniser gpt.tkn --shard-size 10M --out cache/mine

Interrupted, the same command resumes where it stopped; while it runs, a second one on the same
--out is refused (a lock, gpt/lock.py). See gpt/data/prepare.py for the details and
gpt/data/shards.py for the output format. The full sample-10BT gives 100 shards of 100M GPT-2 tokens
(the first is the val split), as the seed did.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gpt.cli import UserError, count, option, parse_options, run
from gpt.data.prepare import prepare_dataset
from gpt.data.shards import split_tokens
from gpt.data.sources import FINEWEB_EDU, DocumentOptions
from gpt.data.tokeniser import TokeniserOptions, use_gpt2_bpe_dir


@dataclass
class FinewebOptions(TokeniserOptions, DocumentOptions):
    """fineweb.py: the documents, the tokeniser and the output."""

    out: str | None = None
    """Data directory; None: cache/fineweb_edu_10B for fineweb-edu sample-10BT, else
    cache/<source name>."""
    shard_size: int = option(100_000_000, parse=count)
    """Tokens per shard at most (a count: 100M, 1e8...)."""
    val_tokens: int | None = option(None, parse=count)
    """Tokens of the val split, taken first; None: one shard, 0: no val split."""
    workers: int = os.cpu_count() or 1
    """Tokenising processes (the default: this machine's cores)."""
    max_docs: int | None = option(None, parse=count)
    """Stop after this many documents."""
    max_tokens: int | None = option(None, parse=count)
    """Stop once this many tokens are written."""
    quiet: bool = False
    """No progress bar."""


def default_out(opts: FinewebOptions) -> Path:
    """cache/fineweb_edu_10B for fineweb-edu sample-10BT (as the seed), else cache/<source>."""
    if opts.source == "fineweb-edu" and opts.dataset is None:
        size = opts.hub_name().removeprefix("sample-").removesuffix("T")
        return Path("cache") / f"fineweb_edu_{size}"
    if opts.dataset is not None:
        return Path("cache") / re.sub(r"[^\w.-]+", "_", opts.dataset)
    return Path("cache") / (Path(opts.source).stem or "data")


def source_label(opts: FinewebOptions) -> str:
    """What the manifest records as the source."""
    if opts.source == "fineweb-edu":
        name = opts.hub_name()
        return f"{opts.dataset or FINEWEB_EDU}" + (f" ({name})" if name else "")
    if opts.source == "python-docs":
        return "python-docs"
    return str(Path(opts.source).resolve())


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_options(
        FinewebOptions,
        argv,
        prog="fineweb.py",
        description="Tokenise a corpus into token shards and a manifest (resumable).",
    )
    if opts.workers < 1:
        raise UserError(f"--workers must be >= 1, got {opts.workers}")
    use_gpt2_bpe_dir(opts.gpt2_bpe_dir)
    out = Path(opts.out) if opts.out is not None else default_out(opts)
    manifest = prepare_dataset(
        opts.documents(),
        out,
        opts.tokeniser,
        shard_size=opts.shard_size,
        val_tokens=opts.val_tokens,
        workers=opts.workers,
        max_docs=opts.max_docs,
        max_tokens=opts.max_tokens,
        source=source_label(opts),
        progress=not opts.quiet,
    )
    train, val = split_tokens(manifest, "train"), split_tokens(manifest, "val")
    print(
        f"{out}: {manifest['docs']:,} documents, {manifest['tokens']:,} tokens "
        f"(train {train:,}, val {val:,}) in {len(manifest['shards'])} shards "
        f"of {manifest['dtype']}, tokeniser {manifest['tokeniser_name']}"
    )
    return 0


if __name__ == "__main__":
    run(main)
