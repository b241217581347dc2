"""The loader: every token of an epoch exactly once over all ranks, whole shuffled documents,
exact resume, a deterministic val split, and one-line refusals naming the file.

The datasets here are written by hand with unique token ids (eot = 0, every other id appears
once), so the stream that the ranks receive can be checked token by token against the shards.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from gpt.data.loader import DataLoader
from gpt.data.prepare import prepare_dataset
from gpt.data.shards import (
    FORMAT_VERSION,
    MANIFEST,
    MANIFEST_FORMAT,
    DataError,
    shard_name,
    token_dtype,
    write_shard,
)
from gpt.data.tokeniser import GPTTokeniser
from gpt.fsio import write_json_atomic

EOT = 0
VOCAB = 2**20
FINGERPRINT = "f0" * 32


def make_dataset(out: Path, docs_per_shard: list[tuple[str, int]], seed: int = 0) -> list[list]:
    """Shards of documents [EOT, unique ids...] of 1 to 120 tokens; returns each shard's docs."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    next_id = 1
    entries, all_docs = [], []
    for i, (split, n_docs) in enumerate(docs_per_shard):
        docs = []
        for length in rng.integers(1, 121, size=n_docs):
            docs.append(np.array([EOT, *range(next_id, next_id + length - 1)], np.uint32))
            next_id += length - 1
        name = shard_name(i, split)
        write_shard(out / name, docs, [len(d) for d in docs])
        entries.append(
            {"file": name, "split": split, "tokens": sum(map(len, docs)), "docs": n_docs}
        )
        all_docs.append(docs)
    manifest = {
        "format": MANIFEST_FORMAT,
        "format_version": FORMAT_VERSION,
        "source": "test",
        "tokeniser": "gpt2",
        "tokeniser_name": "synthetic",
        "fingerprint": FINGERPRINT,
        "eot": EOT,
        "vocab_size": VOCAB,
        "dtype": token_dtype(VOCAB),
        "complete": True,
        "shards": entries,
    }
    write_json_atomic(out / MANIFEST, manifest)
    return all_docs


SHARDS = [("val", 9), ("train", 40), ("train", 3), ("train", 25), ("train", 1), ("train", 31)]


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, list[list]]:
    return tmp_path / "data", make_dataset(tmp_path / "data", SHARDS)


def epoch_stream(loaders: list[DataLoader]) -> tuple[np.ndarray, list[torch.Tensor]]:
    """All x tokens of one epoch in stream order (global batch by global batch, rank by rank)
    and every y, checked to be x shifted by one across rank boundaries."""
    first = loaders[0]
    n_steps = (first.tokens_in_split - 1) // first.global_batch
    parts, ys = [], []
    for _ in range(n_steps):
        for loader in loaders:
            assert loader.epoch == first.epoch
            x, y = loader.next_batch()
            assert x.shape == y.shape == (loader.batch_size, loader.seq_len)
            assert x.dtype == y.dtype == torch.int64
            parts.append(x.flatten())
            ys.append(y.flatten())
    stream = torch.cat(parts).numpy()
    for i, y in enumerate(ys):
        np.testing.assert_array_equal(y[:-1].numpy(), parts[i][1:].numpy())
        if i + 1 < len(parts):
            assert y[-1] == parts[i + 1][0]
    return stream, ys


def documents_of(stream: np.ndarray) -> list[np.ndarray]:
    """The stream cut before each EOT (the stream starts at a document start)."""
    assert stream[0] == EOT
    starts = np.flatnonzero(stream == EOT)
    return np.split(stream, starts[1:])


@pytest.mark.parametrize(("world_size", "batch", "seq"), [(1, 3, 7), (2, 2, 16), (3, 1, 50)])
def test_epoch_covers_every_token_once_over_ranks(dataset, world_size: int, batch: int, seq: int):
    data_dir, shards = dataset
    ranks = range(world_size)
    loaders = [DataLoader(data_dir, batch, seq, rank=r, world_size=world_size) for r in ranks]
    train = [docs for (split, _), docs in zip(SHARDS, shards, strict=True) if split == "train"]
    all_tokens = np.concatenate([d for docs in train for d in docs])
    n = loaders[0].tokens_in_split
    assert n == len(all_tokens)

    stream, _ = epoch_stream(loaders)
    remainder = n - len(stream)
    assert 1 <= remainder <= batch * seq * world_size  # only a tail shorter than a global batch
    # Multiset check: every id once, eots counted, nothing from outside the split.
    ids, counts = np.unique(stream, return_counts=True)
    all_ids, all_counts = np.unique(all_tokens, return_counts=True)
    assert np.all(np.isin(ids, all_ids))
    assert np.all(counts[ids != EOT] == 1)
    assert counts[ids == EOT].sum() <= all_counts[all_ids == EOT].sum()
    assert len(np.setdiff1d(all_ids, ids)) <= remainder

    # Whole documents, each shard's documents together, in a shuffled order.
    doc_of = {}  # a document's first id after its eot -> (shard, index)
    for s, docs in enumerate(train):
        doc_of.update({int(d[1]): (s, j) for j, d in enumerate(docs) if len(d) > 1})
    seen_shards, order = [], []
    got = documents_of(stream)
    for k, doc in enumerate(got):
        if len(doc) == 1:
            continue  # an empty document (just its eot) has no id to find it by
        s, j = doc_of[int(doc[1])]
        if k + 1 < len(got):
            np.testing.assert_array_equal(doc, train[s][j])
        if not seen_shards or seen_shards[-1] != s:
            assert s not in seen_shards  # a shard's documents are contiguous in the stream
            seen_shards.append(s)
        order.append((s, j))
    assert order != sorted(order)  # documents are shuffled
    pairs = zip(order, order[1:], strict=False)
    assert any(j > j2 for (s, j), (s2, j2) in pairs if s == s2)  # within a shard too


def test_epochs_reshuffle_and_seeds_reproduce(dataset) -> None:
    data_dir, _ = dataset
    a = DataLoader(data_dir, 2, 8)
    epoch0, _ = epoch_stream([a])
    epoch1, _ = epoch_stream([a])
    assert a.epoch == 1
    assert not np.array_equal(epoch0[:500], epoch1[:500])
    again, _ = epoch_stream([DataLoader(data_dir, 2, 8)])
    np.testing.assert_array_equal(again, epoch0)
    other, _ = epoch_stream([DataLoader(data_dir, 2, 8, seed=7)])
    assert not np.array_equal(other, epoch0)


@pytest.mark.parametrize("stop", [0, 1, 9, 40])
def test_restored_loader_yields_the_same_batches(dataset, stop: int) -> None:
    data_dir, _ = dataset
    a = DataLoader(data_dir, 3, 10, rank=1, world_size=2)
    for _ in range(stop):
        a.next_batch()
    state = json.loads(json.dumps(a.state_dict()))  # JSON types only
    b = DataLoader(data_dir, 3, 10, rank=1, world_size=2)
    b.load_state_dict(state)
    for _ in range(150):  # far enough to cross shard and epoch boundaries
        (xa, ya), (xb, yb) = a.next_batch(), b.next_batch()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert a.epoch >= 1 and b.state_dict() == a.state_dict()


def test_state_of_another_split_or_seed_is_refused(dataset) -> None:
    data_dir, _ = dataset
    state = DataLoader(data_dir, 2, 4).state_dict()
    with pytest.raises(DataError, match="seed"):
        DataLoader(data_dir, 2, 4, seed=1).load_state_dict(state)
    with pytest.raises(DataError, match="split"):
        DataLoader(data_dir, 2, 4, split="val").load_state_dict(state)
    with pytest.raises(ValueError, match="position"):
        DataLoader(data_dir, 2, 4).load_state_dict({**state, "position": -1})


def test_val_split_is_deterministic_in_file_order(dataset) -> None:
    data_dir, shards = dataset
    val = DataLoader(data_dir, 2, 5, split="val")
    in_order = np.concatenate(shards[0])
    assert val.tokens_in_split == len(in_order)
    first = [val.next_batch() for _ in range(3)]
    got = torch.cat([x.flatten() for x, _ in first]).numpy()
    np.testing.assert_array_equal(got, in_order[:30])
    val.next_batch()
    val.reset()
    again = [val.next_batch() for _ in range(3)]
    for (x, y), (x2, y2) in zip(first, again, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)


def test_prepared_dataset_round_trip(tmp_path: Path) -> None:
    """Shards from prepare_dataset (a custom tokeniser) read back through the loader."""
    docs = [f"document {i} " + "lorem ipsum dolor " * (i % 9) for i in range(300)]
    tkn = tmp_path / "t.tkn"
    tok = GPTTokeniser.train(docs, 300)
    tok.save(tkn)
    prepare_dataset(docs, tmp_path / "d", str(tkn), shard_size=900, workers=1, progress=False)
    loader = DataLoader(tmp_path / "d", 4, 16, fingerprint=tok.fingerprint)
    stream, _ = epoch_stream([loader])
    want = [[tok.eot_token, *tok.encode_ordinary(d)] for d in docs]
    got = {tuple(d.tolist()) for d in np.split(stream, np.flatnonzero(stream == tok.eot_token)[1:])}
    assert len(got - {tuple(w) for w in want}) <= 1  # all whole documents but the last, cut one


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-3])


def set_version(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[8:16] = struct.pack("<q", FORMAT_VERSION + 1)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (truncate, "truncated shard"),
        (set_version, f"format version {FORMAT_VERSION + 1}"),
        (lambda p: p.unlink(), "not found"),
        (lambda p: write_shard(p, [np.arange(5, dtype=np.uint32)], [5]), "does not match"),
    ],
)
def test_damaged_shard_is_refused_naming_it(dataset, damage, message: str) -> None:
    data_dir, _ = dataset
    path = data_dir / shard_name(3, "train")
    damage(path)
    with pytest.raises(DataError, match=message) as err:
        DataLoader(data_dir, 2, 8)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    DataLoader(data_dir, 2, 8, split="val")  # the other split is still usable


def test_document_without_eot_is_refused_when_read(dataset) -> None:
    data_dir, shards = dataset
    path = data_dir / shard_name(1, "train")
    raw = bytearray(path.read_bytes())
    start = 64 + 8 * (len(shards[1]) + 1) + 4 * len(shards[1][0])  # the second document's eot
    raw[start : start + 4] = struct.pack("<I", 77)
    path.write_bytes(bytes(raw))
    loader = DataLoader(data_dir, 2, 8)
    with pytest.raises(DataError, match="does not start with eot") as err:
        epoch_stream([loader])
    assert str(path) in str(err.value)


def test_refusals_name_the_file(tmp_path: Path, dataset) -> None:
    data_dir, _ = dataset
    with pytest.raises(DataError, match="not found") as err:
        DataLoader(tmp_path / "missing", 2, 8)
    assert str(tmp_path / "missing") in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        DataLoader(tmp_path / "empty", 2, 8)
    with pytest.raises(DataError, match="fingerprint") as err:
        DataLoader(data_dir, 2, 8, fingerprint="ab" * 32)
    assert str(data_dir / MANIFEST) in str(err.value)
    DataLoader(data_dir, 2, 8, fingerprint=FINGERPRINT)
    val_tokens = DataLoader(data_dir, 1, 1, split="val").tokens_in_split
    with pytest.raises(DataError, match="fewer than one batch") as err:
        DataLoader(data_dir, 1, val_tokens, split="val")
    assert str(data_dir / MANIFEST) in str(err.value)
    DataLoader(data_dir, 1, val_tokens - 1, split="val")
    manifest = json.loads((data_dir / MANIFEST).read_text())
    write_json_atomic(data_dir / MANIFEST, {**manifest, "format_version": 0})
    with pytest.raises(DataError, match="format version 0"):
        DataLoader(data_dir, 2, 8)
