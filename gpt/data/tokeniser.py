"""Tokenisers: tiktoken's GPT-2 encoding (works offline) and our fast byte-level BPE (`.tkn`).

    python gpt/data/tokeniser.py --source fineweb-edu --docs 10000 --vocab-size 50257 --out gpt.tkn
    python -m gpt.data.tokeniser --source texts/ --vocab-size 4096 --pattern gpt2 --out small.tkn

Every tokeniser is a `Tokeniser` built by `get_tokeniser(spec)`, where spec is "gpt2" or the path
of a `.tkn` file. It offers tiktoken's names (`encode`, `encode_ordinary`,
`encode_ordinary_batch`, `decode`, `n_vocab`, `eot_token`, `name`) plus a `fingerprint` that data
manifests and checkpoints store so that a data/model mismatch is caught.

Design of `GPTTokeniser` (a byte-level BPE with a pre-split regex):
- Training counts the pre-tokens (regex pieces) and merges pairs with the Hugging Face
  `tokenizers` BpeTrainer (Rust, parallel): the regex split, then the byte-level alphabet of all
  256 bytes, no special tokens inside the merges. Its merges are converted, in order, into pairs
  of our token ids: ids 0..255 are the bytes 0..255 in byte order, merge i makes token 256 + i,
  and the special tokens take the ids right after the merges, so `n_vocab == vocab_size`.
- Encoding and decoding run in a `tiktoken.Encoding` built from those ranks (rank = token id):
  tiktoken repeatedly joins the adjacent pair whose concatenation has the lowest rank, which is
  the trained merges applied in order (tests and bench/tokeniser.py check that the tokens equal
  the `tokenizers` model's on real text and hard strings).
- The pattern must split alike in both regex engines (Oniguruma in `tokenizers`, fancy-regex in
  tiktoken); training checks it on a probe text and refuses a pattern that does not.
- The `.tkn` file is ours: versioned text, see `GPTTokeniser.save`.

Reference figures (bench/tokeniser.py, 20 MB, 32,768 ids): training as fast as the `tokenizers`
trainer alone, encoding as fast as tiktoken, bytes per token equal to the trainer's own model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import sys
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence, Sized
from pathlib import Path
from typing import Any, Literal

if __name__ == "__main__" and not __package__:  # run as a file: import the package, not siblings
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import tiktoken  # noqa: E402
import tiktoken.load  # noqa: E402

from gpt.cli import UserError

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

GPT2_FILES = ("encoder.json", "vocab.bpe")
GPT2_HOST = "openaipublic.blob.core.windows.net"
GPT2_URLS = tuple(f"https://{GPT2_HOST}/gpt-2/encodings/main/{f}" for f in GPT2_FILES)


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


class Tokeniser:
    """A byte-level BPE encoding run by tiktoken, with our name, spec and fingerprint."""

    def __init__(self, encoding: tiktoken.Encoding, name: str, spec: str, fingerprint: str):
        self._enc = encoding
        self.name = name
        self.spec = spec
        self.fingerprint = fingerprint

    @property
    def n_vocab(self) -> int:
        """Number of token ids, special tokens included."""
        return self._enc.n_vocab

    @property
    def eot_token(self) -> int:
        """Id of `<|endoftext|>`, which separates documents."""
        return self._enc.eot_token

    @property
    def special_tokens(self) -> dict[str, int]:
        """The special tokens' texts and ids."""
        return {s: self._enc.encode_single_token(s) for s in self._enc.special_tokens_set}

    def encode(
        self,
        text: str,
        *,
        allowed_special: Literal["all"] | Collection[str] = frozenset(),
        disallowed_special: Literal["all"] | Collection[str] = "all",
    ) -> list[int]:
        """Token ids of `text`; special-token text raises ValueError unless allowed (tiktoken)."""
        return self._enc.encode(
            text, allowed_special=allowed_special, disallowed_special=disallowed_special
        )

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of `text`, special-token text encoded as plain text."""
        return self._enc.encode_ordinary(text)

    def encode_ordinary_batch(self, texts: list[str], *, num_threads: int = 8) -> list[list[int]]:
        """`encode_ordinary` of each text, in parallel threads."""
        return self._enc.encode_ordinary_batch(texts, num_threads=num_threads)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`; bytes that are not valid UTF-8 become U+FFFD (never raises)."""
        return self._enc.decode(list(ids), errors="replace")

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """The raw bytes of `ids`."""
        return self._enc.decode_bytes(list(ids))

    def token_bytes(self, token: int) -> bytes:
        """The bytes of one token id."""
        return self._enc.decode_single_token_bytes(token)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, n_vocab={self.n_vocab})"


# GPT-2 --------------------------------------------------------------------------------------

_GPT2_CACHE: dict[str | None, Tokeniser] = {}


def _offline_hint() -> str:
    return (
        "download the GPT-2 files encoder.json and vocab.bpe once and point at their folder "
        "with --gpt2-bpe-dir DIR or the GPT2_BPE_DIR environment variable "
        "(or put them in tiktoken's TIKTOKEN_CACHE_DIR under the sha1 of their URL)"
    )


def _gpt2_ranks_from_dir(bpe_dir: str) -> dict[bytes, int]:
    """GPT-2's mergeable ranks from a folder with encoder.json and vocab.bpe (tiktoken's loader)."""
    folder = Path(bpe_dir).expanduser()
    missing = [f for f in GPT2_FILES if not (folder / f).is_file()]
    if missing:
        raise TokeniserError(
            f"GPT2_BPE_DIR={bpe_dir}: {' and '.join(missing)} not found there; "
            "the folder must hold GPT-2's encoder.json and vocab.bpe"
        )
    try:
        return tiktoken.load.data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(folder / "vocab.bpe"), encoder_json_file=str(folder / "encoder.json")
        )
    except (AssertionError, ValueError, KeyError, UnicodeDecodeError, OSError) as e:
        raise TokeniserError(
            f"GPT2_BPE_DIR={bpe_dir}: encoder.json and vocab.bpe are damaged or do not match "
            f"({type(e).__name__})"
        ) from e


def _gpt2_cached() -> bool:
    """Whether tiktoken's download cache already holds both GPT-2 files."""
    cache = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get("DATA_GYM_CACHE_DIR"))
    if cache is None:
        import tempfile

        cache = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    keys = [hashlib.sha1(u.encode()).hexdigest() for u in GPT2_URLS]
    return bool(cache) and all(os.path.isfile(os.path.join(cache, k)) for k in keys)


def _check_reachable(timeout: float = 10.0) -> None:
    """Fail fast when the download host cannot be reached (tiktoken's download has no timeout)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return  # the proxy decides; let tiktoken's own request try
    try:
        socket.create_connection((GPT2_HOST, 443), timeout=timeout).close()
    except OSError as e:
        raise TokeniserError(
            f"cannot download the GPT-2 encoding ({GPT2_HOST} unreachable): {_offline_hint()}"
        ) from e


def _gpt2_encoding(bpe_dir: str | None) -> tiktoken.Encoding:
    """tiktoken's GPT-2 encoding, from local files or tiktoken's download (cached once)."""
    if bpe_dir is None:
        if not _gpt2_cached():
            _check_reachable()
        try:
            return tiktoken.get_encoding("gpt2")
        except Exception as e:  # requests' errors, hash mismatch, unwritable cache
            raise TokeniserError(
                f"cannot download the GPT-2 encoding ({type(e).__name__}): {_offline_hint()}"
            ) from e
    ranks = _gpt2_ranks_from_dir(bpe_dir)
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: len(ranks)},
        explicit_n_vocab=50257,
    )


def _gpt2(bpe_dir: str | None) -> Tokeniser:
    """The GPT-2 tokeniser (one per process and folder)."""
    if bpe_dir not in _GPT2_CACHE:
        enc = _gpt2_encoding(bpe_dir)
        ranks = [enc.decode_single_token_bytes(i) for i in range(enc.max_token_value)]
        fp = fingerprint_of(ranks, enc._pat_str, {ENDOFTEXT: enc.eot_token})
        _GPT2_CACHE[bpe_dir] = _GPT2Tokeniser(enc, bpe_dir, fp)
    return _GPT2_CACHE[bpe_dir]


class _GPT2Tokeniser(Tokeniser):
    """tiktoken's GPT-2 encoding; pickles as the folder it was read from."""

    def __init__(self, encoding: tiktoken.Encoding, bpe_dir: str | None, fingerprint: str):
        super().__init__(encoding, "gpt2", "gpt2", fingerprint)
        self.bpe_dir = bpe_dir

    def __reduce__(self) -> tuple[Callable[..., Tokeniser], tuple[str | None]]:
        return _gpt2, (self.bpe_dir,)


def get_tokeniser(spec: str) -> Tokeniser:
    """The tokeniser named by `spec`: "gpt2" (tiktoken's GPT-2 encoding, from the folder in env
    GPT2_BPE_DIR when set) or the path of a `.tkn` file."""
    if spec == "gpt2":
        return _gpt2(os.environ.get("GPT2_BPE_DIR") or None)
    path = Path(spec).expanduser()
    if path.suffix != ".tkn" and not path.is_file():
        raise TokeniserError(f"unknown tokeniser {spec!r}: use 'gpt2' or the path of a .tkn file")
    return GPTTokeniser(path)


def add_tokeniser_args(parser: argparse.ArgumentParser) -> None:
    """Add --tokeniser SPEC and --gpt2-bpe-dir DIR (which sets env GPT2_BPE_DIR when parsed)."""

    class _SetBpeDir(argparse.Action):
        def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
            os.environ["GPT2_BPE_DIR"] = str(values)
            setattr(namespace, self.dest, values)

    group = parser.add_argument_group("tokeniser")
    group.add_argument(
        "--tokeniser",
        default="gpt2",
        metavar="SPEC",
        help="'gpt2' (tiktoken's GPT-2 encoding) or the path of a .tkn file "
        "written by gpt/data/tokeniser.py (default: gpt2)",
    )
    group.add_argument(
        "--gpt2-bpe-dir",
        action=_SetBpeDir,
        default=None,
        metavar="DIR",
        help="folder with GPT-2's encoder.json and vocab.bpe, to work offline; sets the "
        "GPT2_BPE_DIR environment variable (default: $GPT2_BPE_DIR, else tiktoken downloads them)",
    )


# Our byte-level BPE --------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map, the alphabet of `tokenizers`' ByteLevel.

    >>> m = _bytes_to_unicode(); (m[ord("a")], m[ord(" ")], len(set(m.values())))
    ('a', 'Ġ', 256)
    """
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = [b for b in range(256) if b not in printable]
    chars = {b: chr(b) for b in printable}
    chars.update({b: chr(256 + n) for n, b in enumerate(extra)})
    return chars


def _escape(token: bytes) -> str:
    """A readable, JSON-quoted view of a token's bytes (invalid UTF-8 as \\xNN escapes)."""
    return json.dumps(token.decode("utf-8", errors="backslashreplace"), ensure_ascii=False)


def resolve_pattern(pattern: str) -> str:
    """A pattern name ("gpt4", "gpt2") or a regex, as a regex."""
    return PATTERNS.get(pattern, pattern)


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
    from tokenizers import Tokenizer, models, trainers

    byte_char = _bytes_to_unicode()
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


# Text on which a pattern's pieces differ between regex engines if they differ at all.
PATTERN_PROBE = (
    "Hello world's I'LL 12345 3.14 x  \n\n  \r\n\t y\u00a0z \u4e2d\u6587 \U0001f600!? "
    "e\u0301  \n end  "
)


def _pre_tokenizer(pattern: str, char_byte: dict[str, int]) -> Any:
    """`tokenizers`' pre-split by `pattern` then bytes as characters; refuses a pattern that
    Oniguruma (in `tokenizers`) splits unlike `regex` (tiktoken's syntax)."""
    import regex
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
    from tqdm import tqdm

    total = len(documents) if isinstance(documents, Sized) else None
    bar = tqdm(documents, "reading", total, unit=" docs", mininterval=1.0, disable=not progress)
    yield from bar
    if progress:
        print(done, file=sys.stderr, flush=True)


class GPTTokeniser(Tokeniser):
    """Our byte-level BPE: GPTTokeniser(path) loads a `.tkn` file, `GPTTokeniser.train` trains.

    >>> tok = GPTTokeniser.train(["hug pug pun bun hugs"] * 10, vocab_size=260)
    >>> tok.n_vocab, tok.eot_token, tok.decode(tok.encode("hugs bun"))
    (260, 259, 'hugs bun')
    """

    def __init__(self, path: str | os.PathLike[str]):
        path = Path(path).expanduser().resolve()
        merges, pattern, specials = _read_tkn(path)
        self._setup(merges, pattern, specials, str(path))

    @classmethod
    def from_merges(
        cls,
        merges: Sequence[tuple[int, int]],
        pattern: str = GPT4_PATTERN,
        special_tokens: Sequence[str] = (ENDOFTEXT,),
    ) -> GPTTokeniser:
        """A tokeniser from merges (pairs of ids; merge i makes id 256 + i), not yet saved."""
        self = cls.__new__(cls)
        specials = {s: 256 + len(merges) + i for i, s in enumerate(special_tokens)}
        self._setup(list(merges), resolve_pattern(pattern), specials, "")
        return self

    @classmethod
    def train(
        cls,
        documents: Iterable[str],
        vocab_size: int,
        pattern: str = GPT4_PATTERN,
        special_tokens: Sequence[str] = (ENDOFTEXT,),
        progress: bool = False,
    ) -> GPTTokeniser:
        """Train on `documents` to `vocab_size` ids in all (256 bytes + merges + specials).

        `pattern` is "gpt4", "gpt2" or a regex both tiktoken and Oniguruma accept. Fewer merges
        result when the text has too few distinct pairs (then `n_vocab < vocab_size`).
        """
        n_merges = vocab_size - 256 - len(special_tokens)
        if n_merges < 0:
            raise TokeniserError(
                f"vocab_size {vocab_size} is below 256 bytes + {len(special_tokens)} special tokens"
            )
        if ENDOFTEXT not in special_tokens or len(set(special_tokens)) < len(special_tokens):
            raise TokeniserError(f"special_tokens must include {ENDOFTEXT} and have no repeats")
        pattern = resolve_pattern(pattern)
        merges = train_merges(documents, n_merges, pattern, progress=progress)
        return cls.from_merges(merges, pattern, special_tokens)

    def _setup(
        self, merges: list[tuple[int, int]], pattern: str, specials: dict[str, int], spec: str
    ) -> None:
        where = spec or "tokeniser"
        if ENDOFTEXT not in specials:
            raise TokeniserError(f"{where}: the special tokens must include {ENDOFTEXT}")
        ranks = [bytes([b]) for b in range(256)]
        for a, b in merges:
            if not (0 <= a < len(ranks) and 0 <= b < len(ranks)):
                raise TokeniserError(f"{where}: merge {len(ranks)} ({a}, {b}) names a later id")
            ranks.append(ranks[a] + ranks[b])
        try:
            enc = tiktoken.Encoding(
                name="gpt-alpha",
                pat_str=pattern,
                mergeable_ranks={t: i for i, t in enumerate(ranks)},
                special_tokens=specials,
                explicit_n_vocab=len(ranks) + len(specials),
            )
        except (ValueError, AssertionError) as e:
            raise TokeniserError(f"{where}: invalid pattern or repeated tokens: {e}") from e
        name = Path(spec).stem if spec else "gpt-alpha"
        super().__init__(enc, name, spec, fingerprint_of(ranks, pattern, specials))
        self.merges = merges
        self.pattern = pattern

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the `.tkn` file atomically, and make `spec` its absolute path.

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
        path = Path(path).expanduser().resolve()
        ranks = [self.token_bytes(i) for i in range(256 + len(self.merges))]
        lines = [f"{TKN_FORMAT} {TKN_VERSION}", f"pattern {json.dumps(self.pattern)}"]
        specials = sorted(self.special_tokens.items(), key=lambda kv: kv[1])
        lines.append(f"specials {len(specials)}")
        lines += [f"{i} {json.dumps(s)}" for s, i in specials]
        lines.append(f"merges {len(self.merges)}")
        lines += [
            f"{256 + n} {a} {b} {_escape(ranks[256 + n])}" for n, (a, b) in enumerate(self.merges)
        ]
        lines.append(f"fingerprint {self.fingerprint}")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        self.spec = str(path)
        self.name = path.stem

    def __reduce__(self) -> tuple[Callable[..., GPTTokeniser], tuple[Any, ...]]:
        return _rebuild, (self.merges, self.pattern, self.special_tokens, self.spec)


def _rebuild(
    merges: list[tuple[int, int]], pattern: str, specials: dict[str, int], spec: str
) -> GPTTokeniser:
    """Unpickle a GPTTokeniser from its parts (no file access)."""
    tok = GPTTokeniser.__new__(GPTTokeniser)
    tok._setup(merges, pattern, specials, spec)
    return tok


def _read_tkn(path: Path) -> tuple[list[tuple[int, int]], str, dict[str, int]]:
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
        raise TokeniserError(f"{path}: not a {TKN_FORMAT} tokeniser file (first line {head!r})")
    if head != f"{TKN_FORMAT} {TKN_VERSION}":
        raise TokeniserError(
            f"{path}: {head!r} is a format version this program does not read "
            f"(it reads version {TKN_VERSION})"
        )
    pattern = reader.string(reader.keyword("pattern"))
    specials: dict[str, int] = {}
    for _ in range(reader.count("specials")):
        i, rest = reader.split(reader.next("special token"), 1)
        specials[reader.string(rest)] = reader.int(i)
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
            reader.bad(f"merge {n} repeats a token or does not match its text {shown}")
        seen.add(token)
        ranks.append(token)
        merges.append((left, right))
    if sorted(specials.values()) != list(range(len(ranks), len(ranks) + len(specials))):
        reader.bad("special token ids must follow the merges")
    fp = reader.keyword("fingerprint")
    if fp != fingerprint_of(ranks, pattern, specials):
        reader.bad("fingerprint does not match the contents (file edited or damaged)")
    if any(line.strip() for line in lines[reader.pos :]):
        reader.bad("unexpected text after the fingerprint")
    return merges, pattern, specials


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
            self.bad(f"expected '{key} ...', found {line[:40]!r}")
        return line[len(key) + 1 :]

    def count(self, key: str) -> int:
        return self.int(self.keyword(key))

    def split(self, line: str, n: int) -> list[str]:
        parts = line.split(" ", n)
        if len(parts) != n + 1:
            self.bad(f"expected {n + 1} fields, found {line[:40]!r}")
        return parts

    def int(self, s: str) -> int:
        if not (s.isascii() and s.isdigit()):  # isdigit alone passes "²", which int() refuses
            self.bad(f"expected a number, found {s[:40]!r}")
        return int(s)

    def string(self, s: str) -> str:
        try:
            value = json.loads(s)
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, str):
            self.bad(f"expected a quoted string, found {s[:40]!r}")
        return value


# The script ----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Train a GPTTokeniser on the first --docs documents of --source and write --out."""
    from gpt.data.sources import add_source_args, documents_from_args

    parser = argparse.ArgumentParser(
        prog="python gpt/data/tokeniser.py",
        description="Train a byte-level BPE tokeniser (.tkn) on the first documents of a source.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_source_args(parser)
    parser.add_argument("--docs", type=int, default=10_000, help="documents to train on")
    parser.add_argument(
        "--vocab-size", type=int, default=50_257, help="token ids in all, special tokens included"
    )
    parser.add_argument("--pattern", choices=sorted(PATTERNS), default="gpt4", help="pre-split")
    parser.add_argument("--out", default="gpt.tkn", help="the .tkn file to write")
    args = parser.parse_args(argv)
    if args.docs < 1:
        raise UserError(f"--docs must be at least 1, got {args.docs}")
    if args.vocab_size < 257:
        raise UserError(f"--vocab-size must be at least 257, got {args.vocab_size}")
    out = Path(args.out)
    if out.suffix != ".tkn":
        raise UserError(f"--out must end in .tkn, got {args.out}")
    if not out.resolve().parent.is_dir():
        raise UserError(f"--out: folder {out.resolve().parent} does not exist")
    docs = documents_from_args(args, max_docs=args.docs)
    tok = GPTTokeniser.train(docs, args.vocab_size, pattern=args.pattern, progress=True)
    tok.save(out)
    print(f"wrote {out} ({tok.n_vocab} tokens, fingerprint {tok.fingerprint[:12]})")
    if tok.n_vocab < args.vocab_size:
        print(f"note: the text allowed only {tok.n_vocab} of {args.vocab_size} tokens")
    return 0


if __name__ == "__main__":
    from gpt.cli import run

    run(main)
