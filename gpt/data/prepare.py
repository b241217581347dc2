"""Documents -> tokens -> shards: parallel, ordered, bounded in memory, resumable.

    python fineweb.py --source python-docs --out cache/python-docs     (the entry point)

`prepare_dataset` stores each document as `[eot] + encode_ordinary(text)`, in source order.
Documents are never split: a shard is closed before the document that would take it past
`shard_size` tokens (a document longer than that gets a shard of its own). The first shards, up
to `val_tokens` tokens (default: one shard, as the seed), form the "val" split; the rest "train".

Tokenisation runs in `workers` processes, each rebuilding the tokeniser from its spec; chunks of
documents go out and come back in order, with at most a few chunks in flight and one shard in
memory, so memory stays bounded (a 100M-token shard is 200 MB as uint16) whatever the source.

Resume: after each shard the manifest (complete: false) lists the finished shards; their
documents are all whole, so a rerun skips that many source documents and goes on. The output of
an interrupted and resumed run is byte-identical to an uninterrupted one.

One preparation at a time: the output folder is locked (gpt/lock.py, OUT/.lock) while it is
prepared, and a second process on the same folder is refused at once, naming the first.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from contextlib import closing
from itertools import chain, islice
from multiprocessing.pool import AsyncResult, Pool
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from gpt import lock
from gpt.cli import UserError
from gpt.data.shards import (
    DTYPES,
    FORMAT_VERSION,
    MANIFEST,
    MANIFEST_FORMAT,
    TOKENISER_FILE,
    DataError,
    read_manifest,
    read_shard_header,
    shard_name,
    token_dtype,
    write_shard,
)
from gpt.data.tokeniser import Tokeniser, get_tokeniser
from gpt.fsio import copy_atomic, make_dirs, temp_files, write_json_atomic

CHUNK_DOCS = 1024  # documents per task sent to a worker, at most
CHUNK_BYTES = 256 * 1024  # text per task, at most (a little more: the last document is whole)
TEMP_FILE = re.compile(r"^\..+\.tmp$")
SHARD_FILE = re.compile(r"^(train|val)_\d{6}\.bin$")

_worker_tokeniser: Tokeniser | None = None


def prepare_dataset(
    documents: Iterable[str],
    out_dir: str | Path,
    tokeniser_spec: str,
    *,
    shard_size: int = 100_000_000,
    val_tokens: int | None = None,
    workers: int | None = None,
    max_docs: int | None = None,
    max_tokens: int | None = None,
    source: str = "documents",
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenise `documents` into shards and a manifest in `out_dir`; returns the manifest.

    `val_tokens`: tokens of the val split (None: one shard, 0: none). `workers`: processes
    (None: all cores; 1: this process). `max_docs`/`max_tokens`: stop after that many source
    documents / once that many tokens are written (the last document kept whole). A rerun over an
    interrupted preparation resumes it; one with another source, tokeniser or settings is refused.
    """
    for flag, value in (("shard_size", shard_size), ("workers", workers)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    for flag, value in (("val_tokens", val_tokens), ("max_docs", max_docs)):
        if value is not None and value < 0:
            raise UserError(f"{flag} must be >= 0, got {value}")
    if max_tokens is not None and max_tokens < 1:
        raise UserError(f"max_tokens must be >= 1, got {max_tokens}")
    out_dir = Path(out_dir)
    tok = get_tokeniser(tokeniser_spec)
    settings = {
        "shard_size": shard_size,
        "val_tokens": shard_size if val_tokens is None else val_tokens,
        "max_docs": max_docs,
        "max_tokens": max_tokens,
    }
    fresh = _fresh_manifest(tok, source, settings)
    if not (out_dir / MANIFEST).is_file():
        documents = _peeked(documents)  # a source that fails does so before any file is written
    with lock.hold(out_dir):
        return _prepare_locked(documents, out_dir, tok, fresh, workers, progress)


def _prepare_locked(
    documents: Iterable[str],
    out_dir: Path,
    tok: Tokeniser,
    fresh: dict[str, Any],
    workers: int | None,
    progress: bool,
) -> dict[str, Any]:
    """`prepare_dataset` in the folder `out_dir`, locked: started from the `fresh` manifest,
    resumed, or returned as it is when complete."""
    max_docs, max_tokens = fresh["settings"]["max_docs"], fresh["settings"]["max_tokens"]
    manifest = _existing_manifest(out_dir, fresh)
    if manifest is None:
        manifest = _create(out_dir, fresh, tok)
    elif manifest["complete"]:
        return manifest
    else:
        _copy_tokeniser(out_dir, manifest, tok)  # a crash may have come before the copy
    writer = _ShardWriter(out_dir, manifest)
    if max_tokens is not None and writer.tokens >= max_tokens:  # stopped just before the end
        return writer.finish()
    pending = islice(documents, manifest["docs"], max_docs)  # resume: skip what is written
    workers = workers or os.cpu_count() or 1
    bar = tqdm(
        total=max_tokens,
        initial=manifest["tokens"],
        unit="tok",
        unit_scale=True,
        desc=f"prepare {out_dir.name}",
        disable=not progress,
        dynamic_ncols=True,
    )
    with bar, closing(_encoded_chunks(pending, tok, workers)) as chunks:
        for tokens, lengths in chunks:
            tokens, lengths = _cut_to_budget(tokens, lengths, writer.tokens, max_tokens)
            writer.add(tokens, lengths)
            bar.update(len(tokens))
            bar.set_postfix(docs=f"{writer.docs:,}", shards=len(manifest["shards"]), refresh=False)
            if max_tokens is not None and writer.tokens >= max_tokens:
                break
        return writer.finish()


def _fresh_manifest(tok: Tokeniser, source: str, settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "format_version": FORMAT_VERSION,
        "source": source,
        "tokeniser": TOKENISER_FILE if tok.spec != "gpt2" else tok.spec,
        "tokeniser_name": tok.name,
        "fingerprint": tok.fingerprint,
        "eot": tok.eot_token,
        "vocab_size": tok.n_vocab,
        "dtype": token_dtype(tok.n_vocab),
        "settings": settings,
        "complete": False,
        "tokens": 0,
        "docs": 0,
        "shards": [],
    }


def _existing_manifest(out_dir: Path, fresh: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of an earlier run of this same preparation in `out_dir` (when interrupted,
    with the stray files it left removed), None when `out_dir` is empty (its lock file aside);
    refuses others."""
    if (out_dir / MANIFEST).is_file():
        manifest = read_manifest(out_dir, allow_incomplete=True)
        _check_same_run(out_dir / MANIFEST, manifest, fresh)
        if not manifest["complete"]:
            _clean_interrupted(out_dir, manifest)
        return manifest
    for leftover in temp_files(out_dir / MANIFEST):  # a crash before the first manifest
        leftover.unlink()
    if any(p.name != lock.LOCK_FILE for p in out_dir.iterdir()):
        raise DataError(f"{out_dir}: exists and is not an empty folder or a prepared dataset")
    return None


def _create(out_dir: Path, manifest: dict[str, Any], tok: Tokeniser) -> dict[str, Any]:
    """Start `out_dir`: the manifest (complete: false), then a custom tokeniser's file."""
    make_dirs(out_dir)
    write_json_atomic(out_dir / MANIFEST, manifest)
    _copy_tokeniser(out_dir, manifest, tok)
    return manifest


def _copy_tokeniser(out_dir: Path, manifest: dict[str, Any], tok: Tokeniser) -> None:
    """Copy a custom tokeniser's file into `out_dir`, unless it is there."""
    if manifest["tokeniser"] == TOKENISER_FILE and not (out_dir / TOKENISER_FILE).is_file():
        copy_atomic(tok.spec, out_dir / TOKENISER_FILE)


def _peeked(documents: Iterable[str]) -> Iterator[str]:
    """The same documents, the first one already read."""
    it = iter(documents)
    first = list(islice(it, 1))
    return chain(first, it)


def _check_same_run(path: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Refuse to continue a dataset prepared from another source, tokeniser or settings."""
    for key in ("source", "fingerprint", "settings"):
        if old.get(key) != new[key]:
            what = "tokeniser" if key == "fingerprint" else key
            was = old.get("tokeniser_name") if key == "fingerprint" else old.get(key)
            now = new["tokeniser_name"] if key == "fingerprint" else new[key]
            raise DataError(
                f"{path}: this folder was prepared with {what} {was}, not {now}; "
                "use another --out or delete the folder"
            )


def _clean_interrupted(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Check the finished shards of an interrupted run and remove what it left half-done."""
    listed = {s["file"] for s in manifest["shards"]}
    for shard in manifest["shards"]:
        header = read_shard_header(out_dir / shard["file"])
        if (header.tokens, header.docs) != (shard["tokens"], shard["docs"]):
            raise DataError(f"{out_dir / shard['file']}: does not match {out_dir / MANIFEST}")
    for path in out_dir.iterdir():
        stray_shard = SHARD_FILE.match(path.name) and path.name not in listed
        if stray_shard or TEMP_FILE.match(path.name):
            path.unlink()


def _chunks(documents: Iterable[str]) -> Iterator[list[str]]:
    """Documents in lists of at most CHUNK_DOCS documents and about CHUNK_BYTES of text."""
    chunk: list[str] = []
    size = 0
    for doc in documents:
        chunk.append(doc)
        size += len(doc)
        if len(chunk) >= CHUNK_DOCS or size >= CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _encode(tok: Tokeniser, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, lengths): `[eot] + encode_ordinary(text)` of every text, concatenated, in the
    manifest dtype, and the length of each document's part (int64)."""
    ids = tok.encode_ordinary_batch(texts, num_threads=1)
    flat: list[int] = []
    for doc in ids:
        flat.append(tok.eot_token)
        flat.extend(doc)
    lengths = np.fromiter((len(doc) + 1 for doc in ids), dtype=np.int64, count=len(ids))
    return np.array(flat, dtype=DTYPES[token_dtype(tok.n_vocab)]), lengths


def _init_worker(spec: str) -> None:
    """Build the tokeniser from its spec, unless the process was forked with it already built."""
    global _worker_tokeniser
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if _worker_tokeniser is None or _worker_tokeniser.spec != spec:
        _worker_tokeniser = get_tokeniser(spec)


def _encode_in_worker(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    assert _worker_tokeniser is not None, "worker started without _init_worker"
    return _encode(_worker_tokeniser, texts)


def _encoded_chunks(
    documents: Iterable[str], tok: Tokeniser, workers: int
) -> Generator[tuple[np.ndarray, np.ndarray], None, None]:
    """`_encode` of each chunk of documents, in order: in this process when `workers` == 1, else
    in a pool of processes with at most 2 * `workers` chunks in flight (bounded memory)."""
    chunks = _chunks(documents)
    if workers == 1:
        for chunk in chunks:
            yield _encode(tok, chunk)
        return
    global _worker_tokeniser
    _worker_tokeniser = tok  # forked workers inherit it instead of loading it again
    with _pool(workers, tok.spec) as pool:
        in_flight: deque[AsyncResult[tuple[np.ndarray, np.ndarray]]] = deque()
        for chunk in chunks:
            in_flight.append(pool.apply_async(_encode_in_worker, (chunk,)))
            if len(in_flight) >= 2 * workers:
                yield in_flight.popleft().get()
        while in_flight:
            yield in_flight.popleft().get()


def _pool(workers: int, spec: str) -> Pool:
    """Worker processes that build the tokeniser from `spec` (forked where possible: fast start,
    and nothing the parent imported is imported again)."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    return context.Pool(workers, initializer=_init_worker, initargs=(spec,))


def _cut_to_budget(
    tokens: np.ndarray, lengths: np.ndarray, written: int, max_tokens: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """The documents of a chunk up to the one that brings the total to `max_tokens` or more."""
    if max_tokens is None or written + len(tokens) < max_tokens:
        return tokens, lengths
    n_docs = int(np.searchsorted(np.cumsum(lengths), max_tokens - written)) + 1
    return tokens[: int(lengths[:n_docs].sum())], lengths[:n_docs]


class _ShardWriter:
    """Packs whole documents into shards, writes each shard and then the manifest atomically."""

    def __init__(self, out_dir: Path, manifest: dict[str, Any]):
        self.out_dir = out_dir
        self.manifest = manifest
        self.shard_size: int = manifest["settings"]["shard_size"]
        self.val_budget: int = manifest["settings"]["val_tokens"]
        self.val_written = 0
        self.val_done = self.val_budget == 0
        for shard in manifest["shards"]:  # replay the split decisions of the finished shards
            if shard["split"] == "train":
                self.val_done = True
            self._count_val(shard["tokens"])
        self.pieces: list[np.ndarray] = []
        self.lengths: list[np.ndarray] = []
        self.shard_tokens = 0

    @property
    def tokens(self) -> int:
        """Tokens written so far, the open shard included."""
        return self.manifest["tokens"] + self.shard_tokens

    @property
    def docs(self) -> int:
        """Source documents consumed so far, the open shard included."""
        return self.manifest["docs"] + sum(len(x) for x in self.lengths)

    def _count_val(self, shard_tokens: int) -> None:
        """Account for a closed shard: the val split ends with the first val shard that was
        limited by the budget left rather than by the shard size, or that reached the budget."""
        if self.val_done:
            return
        budget_left = self.val_budget - self.val_written
        self.val_written += shard_tokens
        self.val_done = self.shard_size >= budget_left or self.val_written >= self.val_budget

    def capacity(self) -> int:
        """Most tokens the open shard may hold (unless its one document is longer)."""
        if self.val_done:
            return self.shard_size
        return min(self.shard_size, self.val_budget - self.val_written)

    def add(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append whole documents (`tokens` concatenated, `lengths` each), closing shards as they
        fill. The result depends only on the documents, not on how they were chunked."""
        starts = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=starts[1:])
        i = 0
        while i < len(lengths):
            room = self.capacity() - self.shard_tokens
            j = int(np.searchsorted(starts, starts[i] + room, side="right")) - 1
            if j == i:
                if self.shard_tokens > 0:
                    self.close()
                    continue
                if not self.val_done and 0 < self.val_written and room < self.shard_size:
                    self.val_done = True  # the val budget left is too small for this document
                    continue
                j = i + 1  # a document longer than a shard: a shard of its own
            self.pieces.append(tokens[starts[i] : starts[j]])
            self.lengths.append(lengths[i:j])
            self.shard_tokens += int(starts[j] - starts[i])
            i = j
            if self.shard_tokens >= self.capacity():
                self.close()

    def close(self) -> None:
        """Write the open shard and the manifest that lists it."""
        if self.shard_tokens == 0:
            return
        split = "train" if self.val_done else "val"
        name = shard_name(len(self.manifest["shards"]), split)
        lengths = np.concatenate(self.lengths)
        write_shard(self.out_dir / name, self.pieces, lengths)
        entry = {"file": name, "split": split, "tokens": self.shard_tokens, "docs": len(lengths)}
        self.manifest["shards"].append(entry)
        self.manifest["tokens"] += self.shard_tokens
        self.manifest["docs"] += len(lengths)
        self._count_val(self.shard_tokens)
        self.pieces, self.lengths, self.shard_tokens = [], [], 0
        write_json_atomic(self.out_dir / MANIFEST, self.manifest)

    def finish(self) -> dict[str, Any]:
        """Close the last shard and mark the manifest complete."""
        self.close()
        self.manifest["complete"] = True
        write_json_atomic(self.out_dir / MANIFEST, self.manifest)
        return self.manifest
