"""Byte-level BPE: training merges with the `tokenizers` trainer, and the `.tkn` file format.

    python tokeniser.py --source python-docs --vocab-size 4096 --out docs.tkn   (the entry point)

The pieces that `gpt.data.tokeniser.GPTTokeniser` is made of, as plain functions over a
tokeniser's parts: merges (pairs of ids; merge i makes id 256 + i, ids 0..255 being the bytes in
byte order), a pre-split regex pattern and special tokens (ids right after the merges).
- `train_merges` counts the pre-tokens (regex pieces) and merges pairs in Hugging Face's
  `tokenizers` BpeTrainer (Rust, parallel): the regex split, then the byte-level alphabet of all
  256 bytes, no special tokens inside the merges. Its merges are converted in order into pairs
  of our ids. tiktoken, which encodes by repeatedly joining the adjacent pair of lowest rank,
  then applies exactly those merges in order (rank = token id).
- The pattern must split alike in both regex engines (Oniguruma in `tokenizers`, fancy-regex in
  tiktoken); training checks it on a probe text and refuses a pattern that does not.
- `write_tkn` / `read_tkn`: our versioned text format, validated line by line on read.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable, Iterator, Sequence, Sized
from pathlib import Path
from typing import Any

import regex
from tqdm import tqdm

from gpt.cli import UserError, excerpt
from gpt.fsio import write_text_atomic

# The pre-split patterns of tiktoken's r50k_base (GPT-2) and cl100k_base (GPT-4). GPT-4's is
# written with `\p{N}{1,3}` where tiktoken has the possessive `\p{N}{1,3}+`: the same split for
# tiktoken's engine, but Oniguruma (in `tokenizers`) reads `{1,3}+` as "one or more runs of 1-3".
GPT2_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
PATTERNS = {"gpt4": GPT4_PATTERN, "gpt2": GPT2_PATTERN}
ENDOFTEXT = "<|endoftext|>"

TKN_FORMAT = "gpt-alpha-tkn"
TKN_VERSION = 1

# Text on which a pattern's pieces differ between regex engines if they differ at all.
PATTERN_PROBE = (
    "Hello world's I'LL 12345 3.14 x  \n\n  \r\n\t y\u00a0z \u4e2d\u6587 \U0001f600!? "
    "e\u0301  \n end  "
)


class TokeniserError(UserError):
    """A tokeniser cannot be built: missing or damaged files, bad settings (one clear line)."""


def fingerprint_of(ranks: Sequence[bytes], pattern: str, specials: dict[str, int]) -> str:
    """Hex sha256 of the tokens in id order (which fix the merges), the pattern and the specials.

    >>> fingerprint_of([bytes([b]) for b in range(256)], "x", {}) == fingerprint_of(
    ...     [bytes([b]) for b in range(256)], "y", {})
    False
    """
    h = hashlib.sha256()
    h.update(f"pattern {json.dumps(pattern)}\n".encode())
    for name, i in sorted(specials.items(), key=lambda kv: kv[1]):
        h.update(f"special {i} {json.dumps(name)}\n".encode())
    for token in ranks:
        h.update(len(token).to_bytes(4, "little") + token)
    return h.hexdigest()


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map: the alphabet of byte-level BPE files
    (`tokenizers`' ByteLevel, GPT-2's vocab.json and merges.txt).

    >>> m = bytes_to_unicode(); (m[ord("a")], m[ord(" ")], len(set(m.values())))
    ('a', 'Ġ', 256)
    """
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = [b for b in range(256) if b not in printable]
    chars = {b: chr(b) for b in printable}
    chars.update({b: chr(256 + n) for n, b in enumerate(extra)})
    return chars


def resolve_pattern(pattern: str) -> str:
    """A pattern name ("gpt4", "gpt2") or a regex, as a regex."""
    return PATTERNS.get(pattern, pattern)


def token_ranks(merges: Sequence[tuple[int, int]], where: str) -> list[bytes]:
    """The bytes of every non-special token, in id order: the 256 bytes, then one per merge."""
    ranks = [bytes([b]) for b in range(256)]
    for a, b in merges:
        if not (0 <= a < len(ranks) and 0 <= b < len(ranks)):
            raise TokeniserError(f"{where}: merge {len(ranks)} ({a}, {b}) names a later id")
        ranks.append(ranks[a] + ranks[b])
    return ranks


# Training ------------------------------------------------------------------------------------


def train_merges(
    documents: Iterable[str],
    n_merges: int,
    pattern: str,
    *,
    progress: bool = False,
) -> list[tuple[int, int]]:
    """The first `n_merges` BPE merges over `documents`, as pairs of token ids (merge i -> 256+i).

    Counting and merging run in `tokenizers`' BpeTrainer (its merges are converted in order;
    a merge whose result already exists is dropped, tiktoken keeps one id per byte string).
    >>> train_merges(["hug"] * 10 + ["pug"] * 5 + ["pun"] * 12, 2, GPT4_PATTERN)[:1]
    [(112, 117)]
    """
    from tokenizers import Tokenizer, models, trainers  # heavy: only training needs it

    byte_char = bytes_to_unicode()
    char_byte = {c: b for b, c in byte_char.items()}
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = _pre_tokenizer(pattern, char_byte)
    trainer = trainers.BpeTrainer(
        vocab_size=256 + n_merges,
        initial_alphabet=list(byte_char.values()),
        show_progress=False,  # its bars would fight ours; ours shows the reading
    )
    read = _read(documents, progress, f"all read; computing up to {n_merges} merges...")
    tok.train_from_iterator(read, trainer=trainer)
    hf_merges = json.loads(tok.to_str())["model"]["merges"]
    ids = {bytes([b]): b for b in range(256)}
    merges: list[tuple[int, int]] = []
    for left, right in (m.split(" ") if isinstance(m, str) else m for m in hf_merges):
        a = bytes(char_byte[c] for c in left)
        b = bytes(char_byte[c] for c in right)
        if a + b in ids:
            continue
        ids[a + b] = 256 + len(merges)
        merges.append((ids[a], ids[b]))
        if len(merges) == n_merges:
            break
    return merges


def _pre_tokenizer(pattern: str, char_byte: dict[str, int]) -> Any:
    """`tokenizers`' pre-split by `pattern` then bytes as characters; refuses a pattern that
    Oniguruma (in `tokenizers`) splits unlike `regex` (tiktoken's syntax)."""
    from tokenizers import Regex, pre_tokenizers

    try:
        expected = regex.findall(pattern, PATTERN_PROBE)
        split = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    except Exception as e:  # regex.error, or tokenizers' plain Exception for Oniguruma's errors
        raise TokeniserError(f"invalid pre-split pattern {pattern!r}: {e}") from e
    pre = pre_tokenizers.Sequence(
        [split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    pieces = pre.pre_tokenize_str(PATTERN_PROBE)
    if [bytes(char_byte[c] for c in p).decode() for p, _ in pieces] != expected:
        raise TokeniserError(
            f"pre-split pattern {pattern!r} splits differently in tokenizers' Oniguruma and in "
            "tiktoken (a possessive interval like {1,3}+?) or leaves text unmatched: rewrite it"
        )
    return pre


def _read(documents: Iterable[str], progress: bool, done: str) -> Iterator[str]:
    """The documents one by one (what train_from_iterator reads fastest), with a progress bar
    of the documents read that writes `done` when they are all read."""
    total = len(documents) if isinstance(documents, Sized) else None
    bar = tqdm(documents, "reading", total, unit=" docs", mininterval=1.0, disable=not progress)
    yield from bar
    if progress:
        print(done, file=sys.stderr, flush=True)


# The .tkn format -----------------------------------------------------------------------------


def _escape(token: bytes) -> str:
    """A readable, JSON-quoted view of a token's bytes (invalid UTF-8 as \\xNN escapes)."""
    return json.dumps(token.decode("utf-8", errors="backslashreplace"), ensure_ascii=False)


def write_tkn(
    path: Path, merges: Sequence[tuple[int, int]], pattern: str, specials: dict[str, int]
) -> None:
    """Write a `.tkn` file atomically.

    The format (UTF-8 text, one item a line; strings are JSON-quoted):
        gpt-alpha-tkn 1
        pattern "<regex>"
        specials 1
        50256 "<|endoftext|>"
        merges 49999
        256 32 116 " t"        new id, left id, right id, the new token's bytes (for reading)
        ...
        fingerprint <sha256 hex>
    Ids 0..255 are the bytes 0..255. The readable token text is checked on load like the rest.
    """
    ranks = token_ranks(merges, str(path))
    lines = [f"{TKN_FORMAT} {TKN_VERSION}", f"pattern {json.dumps(pattern)}"]
    by_id = sorted(specials.items(), key=lambda kv: kv[1])
    lines.append(f"specials {len(by_id)}")
    lines += [f"{i} {json.dumps(s)}" for s, i in by_id]
    lines.append(f"merges {len(merges)}")
    lines += [f"{256 + n} {a} {b} {_escape(ranks[256 + n])}" for n, (a, b) in enumerate(merges)]
    lines.append(f"fingerprint {fingerprint_of(ranks, pattern, specials)}")
    write_text_atomic(path, "\n".join(lines) + "\n")


def read_tkn(path: Path) -> tuple[list[tuple[int, int]], str, dict[str, int]]:
    """Parse and validate a `.tkn` file: (merges, pattern, specials); TokeniserError if bad."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokeniserError(f"{path}: tokeniser file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TokeniserError(f"{path}: cannot read a .tkn tokeniser file ({e})") from e
    lines = text.split("\n")
    reader = _Lines(path, lines)
    head = reader.next("header")
    if not head.startswith(TKN_FORMAT + " "):
        raise TokeniserError(
            f"{path}: not a {TKN_FORMAT} tokeniser file (first line {excerpt(head)})"
        )
    if head != f"{TKN_FORMAT} {TKN_VERSION}":
        raise TokeniserError(
            f"{path}: {excerpt(head)} is a format version this program does not read "
            f"(it reads version {TKN_VERSION})"
        )
    pattern = reader.string(reader.keyword("pattern"))
    specials: dict[str, int] = {}
    for _ in range(reader.count("specials")):
        i, rest = reader.split(reader.next("special token"), 1)
        specials[reader.string(rest)] = reader.int(i)
    merges, ranks = _read_merges(reader)
    if sorted(specials.values()) != list(range(len(ranks), len(ranks) + len(specials))):
        reader.bad("special token ids must follow the merges")
    fp = reader.keyword("fingerprint")
    if fp != fingerprint_of(ranks, pattern, specials):
        reader.bad("fingerprint does not match the contents (file edited or damaged)")
    if any(line.strip() for line in lines[reader.pos :]):
        reader.bad("unexpected text after the fingerprint")
    return merges, pattern, specials


def _read_merges(reader: _Lines) -> tuple[list[tuple[int, int]], list[bytes]]:
    """The `merges N` section: the merges and the bytes of every token they make."""
    n_merges = reader.count("merges")
    merges: list[tuple[int, int]] = []
    ranks = [bytes([b]) for b in range(256)]
    seen = set(ranks)
    for n in range(256, 256 + n_merges):
        new, a, b, shown = reader.split(reader.next("merge"), 3)
        left, right = reader.int(a), reader.int(b)
        if reader.int(new) != n or not (0 <= left < n and 0 <= right < n):
            reader.bad(f"merge {new} {a} {b} is out of order or names an unknown token")
        token = ranks[left] + ranks[right]
        if token in seen or reader.string(shown) != json.loads(_escape(token)):
            reader.bad(f"merge {n} repeats a token or does not match its text {excerpt(shown)}")
        seen.add(token)
        ranks.append(token)
        merges.append((left, right))
    return merges, ranks


class _Lines:
    """A cursor over a `.tkn` file's lines whose errors name the file and line."""

    def __init__(self, path: Path, lines: list[str]):
        self.path, self.lines, self.pos = path, lines, 0

    def bad(self, problem: str) -> Any:
        raise TokeniserError(f"{self.path}: line {self.pos}: {problem} (damaged .tkn file?)")

    def next(self, what: str) -> str:
        if self.pos >= len(self.lines) or (self.pos == len(self.lines) - 1 and not self.lines[-1]):
            raise TokeniserError(f"{self.path}: file ends before the {what} (truncated?)")
        self.pos += 1
        return self.lines[self.pos - 1]

    def keyword(self, key: str) -> str:
        line = self.next(key)
        if not line.startswith(key + " "):
            self.bad(f"expected '{key} ...', found {excerpt(line)}")
        return line[len(key) + 1 :]

    def count(self, key: str) -> int:
        return self.int(self.keyword(key))

    def split(self, line: str, n: int) -> list[str]:
        parts = line.split(" ", n)
        if len(parts) != n + 1:
            self.bad(f"expected {n + 1} fields, found {excerpt(line)}")
        return parts

    def int(self, s: str) -> int:
        if not (s.isascii() and s.isdigit()):  # isdigit alone passes "²", which int() refuses
            self.bad(f"expected a number, found {excerpt(s)}")
        return int(s)

    def string(self, s: str) -> str:
        try:
            value = json.loads(s)
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, str):
            self.bad(f"expected a quoted string, found {excerpt(s)}")
        return value
