"""The shard file format and the manifest: byte layout, round trips, and refusals."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from gpt.data.shards import (
    FORMAT_VERSION,
    MANIFEST,
    MANIFEST_FORMAT,
    TOKENISER_FILE,
    DataError,
    load_doc_offsets,
    load_shard,
    manifest_tokeniser_spec,
    read_manifest,
    read_shard_header,
    token_dtype,
    write_shard,
)
from gpt.fsio import atomic_write, write_json_atomic


def test_shard_bytes_match_a_hand_built_file(tmp_path: Path) -> None:
    """Two documents [eot, 1, 2] and [eot, 3] in uint16, laid out by hand with struct."""
    path = tmp_path / "s.bin"
    write_shard(path, [np.array([50256, 1, 2], np.uint16), np.array([50256, 3], np.uint16)], [3, 2])
    expected = (
        b"GPTASHRD"
        + struct.pack("<7q", FORMAT_VERSION, 2, 5, 2, 0, 0, 0)
        + struct.pack("<3q", 0, 3, 5)
        + struct.pack("<5H", 50256, 1, 2, 50256, 3)
    )
    assert path.read_bytes() == expected


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
@pytest.mark.parametrize("n_docs", [0, 1, 7])
def test_round_trip(tmp_path: Path, dtype: type, n_docs: int) -> None:
    rng = np.random.default_rng(n_docs)
    lengths = rng.integers(1, 50, size=n_docs)
    high = 60_000 if dtype == np.uint16 else 2**32 - 1
    tokens = rng.integers(0, high, size=int(lengths.sum()), dtype=np.int64).astype(dtype)
    pieces = np.split(tokens, [3, 40]) if len(tokens) > 40 else [tokens]
    path = tmp_path / "s.bin"
    write_shard(path, pieces, lengths)

    got = load_shard(path)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, tokens)
    np.testing.assert_array_equal(load_doc_offsets(path), np.concatenate([[0], np.cumsum(lengths)]))
    header = read_shard_header(path)
    assert (header.tokens, header.docs, header.dtype) == (len(tokens), n_docs, np.dtype(dtype))
    if len(tokens):
        assert isinstance(got, np.memmap)


def test_lengths_must_match_tokens(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sum to 4"):
        write_shard(tmp_path / "s.bin", [np.zeros(5, np.uint16)], [2, 2])
    with pytest.raises(ValueError, match="one dtype"):
        write_shard(tmp_path / "s.bin", [np.zeros(2, np.int64)], [2])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("vocab", "dtype"), [(512, "uint16"), (50257, "uint16"), (65536, "uint16"), (65537, "uint32")]
)
def test_token_dtype(vocab: int, dtype: str) -> None:
    assert token_dtype(vocab) == dtype


def _shard(tmp_path: Path) -> Path:
    path = tmp_path / "train_000001.bin"
    write_shard(path, [np.array([9, 1, 2, 9, 3, 4, 5], np.uint16)], [3, 4])
    return path


def _patch(path: Path, offset: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(data)] = data
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-1]), "truncated shard"),
        (lambda p: p.write_bytes(p.read_bytes()[:30]), "truncated shard"),
        (lambda p: p.write_bytes(p.read_bytes() + b"\0\0"), "damaged shard"),
        (lambda p: _patch(p, 0, b"NOTSHARD"), "bad magic"),
        (lambda p: _patch(p, 8, struct.pack("<q", 99)), "format version 99"),
        (lambda p: _patch(p, 16, struct.pack("<q", 8)), "damaged shard header"),
        (lambda p: _patch(p, 24, struct.pack("<q", 8)), "truncated shard"),
        (lambda p: p.unlink(), "not found"),
    ],
)
def test_damaged_shard_is_refused_naming_the_file(tmp_path: Path, damage, message: str) -> None:
    path = _shard(tmp_path)
    damage(path)
    with pytest.raises(DataError, match=message) as err:
        load_shard(path)
    assert str(path) in str(err.value)


def test_inconsistent_offsets_are_refused(tmp_path: Path) -> None:
    path = _shard(tmp_path)
    _patch(path, 64 + 8, struct.pack("<q", 0))  # second document starts where the first does
    load_shard(path)  # the header and size are still right
    with pytest.raises(DataError, match="offsets") as err:
        load_doc_offsets(path)
    assert str(path) in str(err.value)


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(RuntimeError), atomic_write(path) as f:
        f.write(b"half")
        raise RuntimeError("crash")
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def _manifest(**changes: object) -> dict:
    manifest = {
        "format": MANIFEST_FORMAT,
        "format_version": FORMAT_VERSION,
        "source": "test",
        "tokeniser": "gpt2",
        "tokeniser_name": "gpt2",
        "fingerprint": "ab" * 32,
        "eot": 50256,
        "vocab_size": 50257,
        "dtype": "uint16",
        "complete": True,
        "shards": [{"file": "val_000000.bin", "split": "val", "tokens": 7, "docs": 2}],
    }
    manifest.update(changes)
    return manifest


def test_read_manifest(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / MANIFEST, _manifest())
    assert read_manifest(tmp_path) == _manifest()
    assert manifest_tokeniser_spec(tmp_path) == "gpt2"


def test_custom_tokeniser_spec_is_resolved(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / MANIFEST, _manifest(tokeniser=TOKENISER_FILE))
    assert manifest_tokeniser_spec(tmp_path) == str((tmp_path / TOKENISER_FILE).resolve())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format_version": 0}, "format version 0"),
        ({"format": "other"}, "not a token dataset manifest"),
        ({"eot": "x"}, "field 'eot'"),
        ({"dtype": "uint32"}, "dtype"),
        ({"shards": [{"file": "../x.bin", "split": "val", "tokens": 1, "docs": 1}]}, "shard entry"),
        ({"shards": [{"file": "x.bin", "split": "test", "tokens": 1, "docs": 1}]}, "shard entry"),
        ({"complete": False}, "did not finish"),
    ],
)
def test_bad_manifest_is_refused(tmp_path: Path, changes: dict, message: str) -> None:
    write_json_atomic(tmp_path / MANIFEST, _manifest(**changes))
    with pytest.raises(DataError, match=message) as err:
        read_manifest(tmp_path)
    assert str(tmp_path / MANIFEST) in str(err.value)


def test_incomplete_manifest_is_readable_on_request(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / MANIFEST, _manifest(complete=False))
    assert read_manifest(tmp_path, allow_incomplete=True)["complete"] is False


def test_missing_empty_and_garbled(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_manifest(tmp_path / "nope")
    with pytest.raises(DataError, match="empty"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(DataError, match="damaged manifest"):
        read_manifest(tmp_path)
