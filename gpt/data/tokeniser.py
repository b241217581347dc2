"""Tokenisers: the `Tokeniser` interface, tiktoken's GPT-2 encoding (works offline) and our
byte-level BPE (`GPTTokeniser`, a `.tkn` file; trained by `python tokeniser.py`).

Every tokeniser is a `Tokeniser` built by `get_tokeniser(spec)`, where spec is "gpt2" or the path
of a `.tkn` file. It offers tiktoken's names (`encode`, `encode_ordinary`,
`encode_ordinary_batch`, `decode`, `n_vocab`, `eot_token`, `name`) plus a `fingerprint` that data
manifests and checkpoints store so that a data/model mismatch is caught. Encoding and decoding
run in tiktoken for both kinds; `gpt.data.bpe` holds the BPE training and the `.tkn` format.

Reference figures (bench/tokeniser.py, 20 MB, 32,768 ids): training as fast as the `tokenizers`
trainer alone, encoding as fast as tiktoken, bytes per token equal to the trainer's own model.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import tiktoken
import tiktoken.load

from gpt.data.bpe import (
    ENDOFTEXT,
    GPT2_PATTERN,
    GPT4_PATTERN,
    TokeniserError,
    fingerprint_of,
    read_tkn,
    resolve_pattern,
    token_ranks,
    train_merges,
    write_tkn,
)

GPT2_FILES = ("encoder.json", "vocab.bpe")
GPT2_HOST = "openaipublic.blob.core.windows.net"
GPT2_URLS = tuple(f"https://{GPT2_HOST}/gpt-2/encodings/main/{f}" for f in GPT2_FILES)


@dataclass
class TokeniserOptions:
    """The tokeniser flags of a command (fineweb.py, inference.py)."""

    tokeniser: str = "gpt2"
    """'gpt2' (tiktoken's GPT-2 encoding) or the path of a .tkn file written by tokeniser.py."""
    gpt2_bpe_dir: str | None = None
    """Folder with GPT-2's encoder.json and vocab.bpe, to work offline; sets the GPT2_BPE_DIR
    environment variable (None: $GPT2_BPE_DIR, else tiktoken downloads them)."""


def use_gpt2_bpe_dir(folder: str | None) -> None:
    """Read GPT-2's files from `folder` (--gpt2-bpe-dir) in this process and its children, by
    setting env GPT2_BPE_DIR; None leaves the environment as it is."""
    if folder is not None:
        os.environ["GPT2_BPE_DIR"] = folder


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


def tiktoken_cached_gpt2_files() -> tuple[Path, Path] | None:
    """GPT-2's encoder.json and vocab.bpe in tiktoken's download cache (named by the sha1 of
    their URL), or None when the cache does not hold both."""
    cache = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get("DATA_GYM_CACHE_DIR"))
    if cache is None:
        cache = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if not cache:  # tiktoken's way of turning its cache off
        return None
    encoder, bpe = (Path(cache) / hashlib.sha1(u.encode()).hexdigest() for u in GPT2_URLS)
    return (encoder, bpe) if encoder.is_file() and bpe.is_file() else None


def gpt2_bpe_files(bpe_dir: str | None) -> tuple[Path, Path]:
    """GPT-2's encoder.json and vocab.bpe: in `bpe_dir`, GPT2_BPE_DIR or tiktoken's cache."""
    for folder in filter(None, [bpe_dir, os.environ.get("GPT2_BPE_DIR")]):
        encoder, bpe = (Path(folder).expanduser() / f for f in GPT2_FILES)
        if encoder.is_file() and bpe.is_file():
            return encoder, bpe
    cached = tiktoken_cached_gpt2_files()
    if cached is None:
        raise TokeniserError(
            "GPT-2 tokenizer files (encoder.json, vocab.bpe) not found: set GPT2_BPE_DIR"
        )
    return cached


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
        if tiktoken_cached_gpt2_files() is None:
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
        _GPT2_CACHE[bpe_dir] = GPT2Tokeniser(enc, bpe_dir, fp)
    return _GPT2_CACHE[bpe_dir]


class GPT2Tokeniser(Tokeniser):
    """tiktoken's GPT-2 encoding; pickles as the folder it was read from (None: tiktoken's)."""

    def __init__(self, encoding: tiktoken.Encoding, bpe_dir: str | None, fingerprint: str):
        super().__init__(encoding, "gpt2", "gpt2", fingerprint)
        self.bpe_dir = bpe_dir

    def __reduce__(self) -> tuple[Callable[..., Tokeniser], tuple[str | None]]:
        return _gpt2, (self.bpe_dir,)


# Our byte-level BPE --------------------------------------------------------------------------


class GPTTokeniser(Tokeniser):
    """Our byte-level BPE: GPTTokeniser(path) loads a `.tkn` file, `GPTTokeniser.train` trains.

    Ids 0..255 are the bytes 0..255 in byte order, merge i makes token 256 + i, and the special
    tokens take the ids right after the merges, so `n_vocab == vocab_size` (see gpt.data.bpe).

    >>> tok = GPTTokeniser.train(["hug pug pun bun hugs"] * 10, vocab_size=260)
    >>> tok.n_vocab, tok.eot_token, tok.decode(tok.encode("hugs bun"))
    (260, 259, 'hugs bun')
    """

    def __init__(self, path: str | os.PathLike[str]):
        path = Path(path).expanduser().resolve()
        merges, pattern, specials = read_tkn(path)
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
        ranks = token_ranks(merges, where)
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
        """Write the `.tkn` file atomically (format: gpt.data.bpe.write_tkn), and make `spec` its
        absolute path."""
        path = Path(path).expanduser().resolve()
        write_tkn(path, self.merges, self.pattern, self.special_tokens)
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


def get_tokeniser(spec: str) -> Tokeniser:
    """The tokeniser named by `spec`: "gpt2" (tiktoken's GPT-2 encoding, from the folder in env
    GPT2_BPE_DIR when set) or the path of a `.tkn` file."""
    if spec == "gpt2":
        return _gpt2(os.environ.get("GPT2_BPE_DIR") or None)
    path = Path(spec).expanduser()
    if path.suffix != ".tkn" and not path.is_file():
        raise TokeniserError(f"unknown tokeniser {spec!r}: use 'gpt2' or the path of a .tkn file")
    return GPTTokeniser(path)
