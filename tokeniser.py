"""Train a byte-level BPE tokeniser (a `.tkn` file) on the first documents of a source.

    python tokeniser.py                                             # fineweb-edu, 10,000 docs
    python tokeniser.py --source python-docs --vocab-size 4096 --out docs.tkn      # offline
    python tokeniser.py --source texts/ --docs 50000 --vocab-size 32768 --pattern gpt2 --out my.tkn

Then `fineweb.py --tokeniser my.tkn` tokenises a corpus with it and `train.py --tokeniser my.tkn`
trains on that data. gpt/data/bpe.py has the training and the file format, gpt/data/tokeniser.py
the tokeniser that loads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gpt.cli import UserError, parse_options, run
from gpt.data.sources import DocumentOptions
from gpt.data.tokeniser import GPTTokeniser


@dataclass
class TokeniserTrainingOptions(DocumentOptions):
    """tokeniser.py: the documents and the tokeniser to train on them."""

    docs: int = 10_000
    """Documents to train on (the first of the source)."""
    vocab_size: int = 50_257
    """Token ids in all, special tokens included."""
    pattern: Literal["gpt2", "gpt4"] = "gpt4"
    """Pre-split regex: GPT-2's or GPT-4's."""
    out: str = "gpt.tkn"
    """The .tkn file to write."""


def checked_out_path(out: str) -> Path:
    """--out as a path: a .tkn file in a folder that exists."""
    path = Path(out)
    if path.suffix != ".tkn":
        raise UserError(f"--out must end in .tkn, got {out}")
    if not path.resolve().parent.is_dir():
        raise UserError(f"--out: folder {path.resolve().parent} does not exist")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_options(
        TokeniserTrainingOptions,
        argv,
        prog="tokeniser.py",
        description="Train a byte-level BPE tokeniser (.tkn) on the first documents of a source.",
    )
    if opts.docs < 1:
        raise UserError(f"--docs must be at least 1, got {opts.docs}")
    if opts.vocab_size < 257:
        raise UserError(f"--vocab-size must be at least 257, got {opts.vocab_size}")
    out = checked_out_path(opts.out)
    docs = opts.documents(max_docs=opts.docs)
    tok = GPTTokeniser.train(docs, opts.vocab_size, pattern=opts.pattern, progress=True)
    tok.save(out)
    print(f"wrote {out} ({tok.n_vocab} tokens, fingerprint {tok.fingerprint[:12]})")
    if tok.n_vocab < opts.vocab_size:
        print(f"note: the text allowed only {tok.n_vocab} of {opts.vocab_size} tokens")
    return 0


if __name__ == "__main__":
    run(main)
