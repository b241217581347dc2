"""The token shard file format and the dataset manifest: written atomically, validated on read.

A data directory holds shards and a `manifest.json`. A shard file (`.bin`) is, little-endian:

    header   8 bytes  magic b"GPTASHRD"
             7 int64  format version, token itemsize (2: uint16, 4: uint32), token count N,
                      document count D, then three zeros (reserved)
    offsets  D+1 int64  where each document starts in the tokens; offsets[0] = 0, offsets[D] = N
    tokens   N uint16/uint32

Every document is `[eot] + encode_ordinary(text)` and lies whole in one shard, so the offsets
let a loader shuffle documents without scanning for end-of-text tokens.

    >>> write_shard(Path("d/val_000000.bin"), [np.array([50256, 15496], np.uint16)], [2])
    >>> load_shard("d/val_000000.bin")  # memmap([50256, 15496], dtype=uint16)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpt.cli import UserError, excerpt
from gpt.fsio import atomic_write, read_json_object

MAGIC = b"GPTASHRD"
FORMAT_VERSION = 1
HEADER_BYTES = 64
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "gpt-alpha-tokens"
TOKENISER_FILE = "tokeniser.tkn"
SPLITS = ("train", "val")
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
MANIFEST_KEYS: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "format_version": int,
    "source": str,
    "tokeniser": str,
    "tokeniser_name": str,
    "fingerprint": str,
    "eot": int,
    "vocab_size": int,
    "dtype": str,
    "complete": bool,
    "shards": list,
}


class DataError(UserError):
    """A data directory, shard or manifest that cannot be used; the message names the file."""


@dataclass(frozen=True)
class ShardHeader:
    """The fixed-size header at the start of a shard file."""

    version: int
    """Shard format version."""
    dtype: np.dtype
    """Token dtype: uint16 or uint32."""
    tokens: int
    """Number of tokens N."""
    docs: int
    """Number of documents D."""

    @property
    def offsets_start(self) -> int:
        """Byte position of the D+1 int64 document offsets."""
        return HEADER_BYTES

    @property
    def tokens_start(self) -> int:
        """Byte position of the N tokens."""
        return HEADER_BYTES + 8 * (self.docs + 1)

    @property
    def file_size(self) -> int:
        """The exact size in bytes of a file with this header."""
        return self.tokens_start + self.tokens * self.dtype.itemsize


def token_dtype(vocab_size: int) -> str:
    """ "uint16" when every token id fits in 16 bits, else "uint32"."""
    if vocab_size <= 1:
        raise ValueError(f"vocabulary size must be > 1, got {vocab_size}")
    if vocab_size <= 2**16:
        return "uint16"
    if vocab_size <= 2**32:
        return "uint32"
    raise ValueError(f"vocabulary size {vocab_size} does not fit in 32 bits")


def write_shard(path: Path, pieces: Sequence[np.ndarray], doc_lengths: Sequence[int]) -> None:
    """Write a shard atomically: the tokens are `pieces` concatenated (all of one dtype, uint16 or
    uint32), and `doc_lengths` the length of each document in them, in order."""
    dtypes = {p.dtype.newbyteorder("<") for p in pieces}
    if len(dtypes) != 1 or next(iter(dtypes)) not in DTYPES.values():
        raise ValueError(f"shard pieces must share one dtype, uint16 or uint32; got {dtypes}")
    dtype = next(iter(dtypes))
    lengths = np.asarray(doc_lengths, dtype=np.int64)
    if lengths.size and lengths.min() < 1:
        raise ValueError("every document holds at least its end-of-text token")
    offsets = np.zeros(len(lengths) + 1, dtype="<i8")
    np.cumsum(lengths, out=offsets[1:])
    n_tokens = sum(len(p) for p in pieces)
    if offsets[-1] != n_tokens:
        raise ValueError(f"document lengths sum to {offsets[-1]}, pieces hold {n_tokens} tokens")
    fields = np.array([FORMAT_VERSION, dtype.itemsize, n_tokens, len(lengths), 0, 0, 0], "<i8")
    with atomic_write(path) as f:
        f.write(MAGIC + fields.tobytes())
        f.write(offsets.tobytes())
        for piece in pieces:
            f.write(np.ascontiguousarray(piece, dtype=dtype).tobytes())


def read_shard_header(path: str | Path) -> ShardHeader:
    """The validated header of a shard: magic, version, dtype, and sizes against the file length."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(HEADER_BYTES)
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"{path}: shard file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read shard ({e.strerror})") from None
    if len(raw) < HEADER_BYTES:
        raise DataError(f"{path}: truncated shard ({size} bytes, shorter than its header)")
    if raw[:8] != MAGIC:
        raise DataError(f"{path}: not a token shard (bad magic number)")
    version, itemsize, n_tokens, n_docs = np.frombuffer(raw[8:], "<i8")[:4].tolist()
    if version != FORMAT_VERSION:
        raise DataError(
            f"{path}: shard format version {version}, this code reads version {FORMAT_VERSION}; "
            "prepare the data again"
        )
    dtype = {2: DTYPES["uint16"], 4: DTYPES["uint32"]}.get(itemsize)
    if dtype is None or n_tokens < 0 or n_docs < 0:
        raise DataError(f"{path}: damaged shard header")
    header = ShardHeader(version=version, dtype=dtype, tokens=n_tokens, docs=n_docs)
    if size != header.file_size:
        state = "truncated" if size < header.file_size else "damaged"
        raise DataError(f"{path}: {state} shard ({size} bytes, its header says {header.file_size})")
    return header


def load_shard(path: str | Path) -> np.ndarray:
    """The tokens of a shard as a read-only memmap (uint16 or uint32), after validating its header
    and size. Raises DataError naming the file when it is missing, truncated or damaged."""
    header = read_shard_header(path)
    if header.tokens == 0:
        return np.zeros(0, dtype=header.dtype)
    return np.memmap(
        path, dtype=header.dtype, mode="r", offset=header.tokens_start, shape=(header.tokens,)
    )


def load_doc_offsets(path: str | Path) -> np.ndarray:
    """The D+1 document start offsets of a shard (int64, in memory), validated: they start at 0,
    end at the token count and strictly increase."""
    header = read_shard_header(path)
    with Path(path).open("rb") as f:
        f.seek(header.offsets_start)
        offsets = np.frombuffer(f.read(8 * (header.docs + 1)), "<i8").astype(np.int64)
    ok = offsets[0] == 0 and offsets[-1] == header.tokens and bool(np.all(np.diff(offsets) > 0))
    if not ok:
        raise DataError(f"{path}: damaged shard (document offsets are inconsistent)")
    return offsets


def shard_name(index: int, split: str) -> str:
    """File name of the shard at `index` in the data directory, e.g. "val_000000.bin"."""
    return f"{split}_{index:06d}.bin"


def read_manifest(data_dir: str | Path, *, allow_incomplete: bool = False) -> dict[str, Any]:
    """The validated manifest of a data directory. An interrupted preparation (complete: false)
    is refused unless `allow_incomplete`."""
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data directory not found (prepare it with fineweb.py)")
    if not any(data_dir.iterdir()):
        raise DataError(f"{data_dir}: data directory is empty (prepare it with fineweb.py)")
    if not path.is_file():
        raise DataError(f"{path}: no manifest; {data_dir} is not a prepared data directory")
    manifest = read_json_object(path, DataError, "manifest")
    _validate_manifest(manifest, path)
    if not manifest["complete"] and not allow_incomplete:
        raise DataError(
            f"{path}: preparation did not finish; rerun fineweb.py with the same flags to resume it"
        )
    return manifest


def _validate_manifest(manifest: Any, path: Path) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DataError(f"{path}: not a token dataset manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(
            f"{path}: dataset format version {version}, this code reads version "
            f"{FORMAT_VERSION}; prepare the data again"
        )
    for key, kind in MANIFEST_KEYS.items():
        if not isinstance(manifest.get(key), kind):
            raise DataError(f"{path}: damaged manifest (field {key!r} missing or wrong type)")
    if not 1 < manifest["vocab_size"] <= 2**32:  # the range token_dtype accepts
        raise DataError(f"{path}: damaged manifest (vocab_size {excerpt(manifest['vocab_size'])})")
    if manifest["dtype"] not in DTYPES or manifest["dtype"] != token_dtype(manifest["vocab_size"]):
        raise DataError(f"{path}: damaged manifest (dtype {excerpt(manifest['dtype'])})")
    for shard in manifest["shards"]:
        ok = (
            isinstance(shard, dict)
            and isinstance(shard.get("file"), str)
            and Path(shard["file"]).name == shard["file"]
            and shard.get("split") in SPLITS
            and isinstance(shard.get("tokens"), int)
            and isinstance(shard.get("docs"), int)
        )
        if not ok:
            raise DataError(f"{path}: damaged manifest (shard entry {excerpt(shard)})")


def manifest_tokeniser_spec(data_dir: str | Path) -> str:
    """The tokeniser spec of a data directory, resolved: "gpt2", or the absolute path of the
    custom tokeniser copied into it."""
    data_dir = Path(data_dir)
    spec = read_manifest(data_dir, allow_incomplete=True)["tokeniser"]
    if spec == TOKENISER_FILE:
        return str((data_dir / TOKENISER_FILE).resolve())
    return spec


def split_shards(data_dir: str | Path, manifest: dict[str, Any], split: str) -> list[Path]:
    """Paths of the shards of `split`, in manifest order."""
    return [Path(data_dir) / s["file"] for s in manifest["shards"] if s["split"] == split]


def split_tokens(manifest: dict[str, Any], split: str) -> int:
    """Tokens in the shards of `split` ("train" or "val"), by the manifest.

    >>> split_tokens({"shards": [{"split": "val", "tokens": 5}, {"split": "train", "tokens": 7}]},
    ...              "train")
    7
    """
    return sum(s["tokens"] for s in manifest["shards"] if s["split"] == split)
