"""Sharded, shuffled, distributed, resumable batches of tokens, memory-mapped from the shards.

    loader = DataLoader("cache/fineweb_edu_10B", batch_size=16, seq_len=1024, rank=r, world_size=w)
    x, y = loader.next_batch()  # (B, T) int64 each, y = x shifted left by one token

An epoch is one stream of the split's tokens: the shards in an order drawn from (seed, epoch),
each shard's documents in an order drawn from (seed, epoch, shard) (train only; val keeps the
file order), identical on every rank. Each step takes the next B*T*world_size tokens of the
stream (plus one for the last target) and rank r reads its B*T of them: ranks read disjoint
tokens, nothing is skipped or repeated within an epoch except the final remainder shorter than
one global batch, and the position is two integers (epoch, position) that `state_dict` saves.

A document permutation is a list of spans; a batch is gathered with one numpy fancy index into a
contiguous buffer (index = stream position + the span's shift), so no token is touched in Python.
Reference figure (bench/dataloader.py): well above 10M tokens/s for B=16, T=1024 in one process.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpt.cli import excerpt
from gpt.data.shards import (
    DTYPES,
    MANIFEST,
    SPLITS,
    DataError,
    load_doc_offsets,
    load_shard,
    read_manifest,
    read_shard_header,
    split_shards,
)

STATE_VERSION = 1
LAYOUT_CACHE = 2  # shard layouts (document permutations) kept in memory


class DataLoader:
    """Batches of `batch_size` x `seq_len` tokens from the `split` shards of `data_dir`."""

    def __init__(
        self,
        data_dir: str | Path,
        batch_size: int,
        seq_len: int,
        split: str = "train",
        rank: int = 0,
        world_size: int = 1,
        seed: int = 1337,
        fingerprint: str | None = None,
    ):
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.split = split
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = split == "train"
        self.manifest = read_manifest(self.data_dir)
        self._check_fingerprint(fingerprint)
        self.paths = split_shards(self.data_dir, self.manifest, split)
        self._check_shards()
        self.shard_tokens = np.array(
            [s["tokens"] for s in self.manifest["shards"] if s["split"] == split], dtype=np.int64
        )
        self.tokens_in_split = int(self.shard_tokens.sum())
        if self.tokens_in_split < self.global_batch + 1:
            raise DataError(
                f"{self.data_dir / MANIFEST}: the {split} split has {self.tokens_in_split:,} "
                f"tokens, fewer than one batch ({batch_size} x {seq_len} x {world_size} ranks + 1)"
            )
        self.eot = int(self.manifest["eot"])
        self.epoch = 0
        self.position = 0  # start of the next global batch in this epoch's token stream
        self._tokens: dict[int, np.ndarray] = {}
        self._layouts: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._orders: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def global_batch(self) -> int:
        """Tokens that one step takes from the stream over all ranks (targets' extra one aside)."""
        return self.batch_size * self.seq_len * self.world_size

    def _check_fingerprint(self, fingerprint: str | None) -> None:
        have = self.manifest["fingerprint"]
        if fingerprint is not None and fingerprint != have:
            raise DataError(
                f"{self.data_dir / MANIFEST}: tokens made by tokeniser "
                f"{self.manifest['tokeniser_name']} (fingerprint {have[:12]}), but the model's "
                f"tokeniser has fingerprint {fingerprint[:12]}"
            )

    def _check_shards(self) -> None:
        """Every shard of the split has a valid header, the manifest's counts and dtype, and
        consistent document offsets. Raises DataError naming the first bad file."""
        dtype = DTYPES[self.manifest["dtype"]]
        entries = [s for s in self.manifest["shards"] if s["split"] == self.split]
        for path, entry in zip(self.paths, entries, strict=True):
            header = read_shard_header(path)
            found = (header.tokens, header.docs, header.dtype)
            if found != (entry["tokens"], entry["docs"], dtype):
                raise DataError(f"{path}: does not match {self.data_dir / MANIFEST}")
            load_doc_offsets(path)

    def reset(self) -> None:
        """Go back to the start of epoch 0 (the val loop calls this before each evaluation)."""
        self.epoch = 0
        self.position = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y), each (B, T) int64, y[i, t] the token after x[i, t]."""
        if self.position + self.global_batch + 1 > self.tokens_in_split:
            self.epoch += 1
            self.position = 0
        n = self.batch_size * self.seq_len
        start = self.position + self.rank * n
        buf = torch.from_numpy(self._read(start, start + n + 1))  # (B*T + 1,)
        self.position += self.global_batch
        x = buf[:-1].view(self.batch_size, self.seq_len)
        y = buf[1:].view(self.batch_size, self.seq_len)
        return x, y

    def state_dict(self) -> dict[str, Any]:
        """The position, as JSON types; `load_state_dict` continues from it exactly."""
        return {
            "version": STATE_VERSION,
            "split": self.split,
            "seed": self.seed,
            "tokens_in_split": self.tokens_in_split,
            "epoch": self.epoch,
            "position": self.position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a `state_dict` of a loader over the same data, split and seed."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')}, want {STATE_VERSION}")
        for key in ("split", "seed", "tokens_in_split"):
            if state.get(key) != getattr(self, key):
                raise DataError(
                    f"{self.data_dir / MANIFEST}: the saved loader state has {key} "
                    f"{excerpt(state.get(key))}, this loader {getattr(self, key)!r}"
                )
        epoch, position = state.get("epoch"), state.get("position")
        if not (isinstance(epoch, int) and isinstance(position, int)) or not (
            epoch >= 0 and 0 <= position <= self.tokens_in_split
        ):
            raise ValueError(f"bad loader position: epoch {epoch!r}, position {position!r}")
        self.epoch, self.position = epoch, position

    def _order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard indices in stream order, their start positions in the stream + the end)."""
        if epoch not in self._orders:
            n = len(self.paths)
            order = self._rng(epoch).permutation(n) if self.shuffle else np.arange(n)
            starts = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(self.shard_tokens[order], out=starts[1:])
            self._orders = {epoch: (order, starts)}
        return self._orders[epoch]

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *key])

    def _shard(self, shard: int) -> np.ndarray:
        """The tokens of a shard (memmap), checked on first use: every document starts with eot,
        and every id is in the vocabulary (a damaged id would fail deep in the embedding)."""
        if shard not in self._tokens:
            path = self.paths[shard]
            tokens = load_shard(path)
            if not np.all(tokens[load_doc_offsets(path)[:-1]] == self.eot):
                raise DataError(f"{path}: damaged shard (a document does not start with eot)")
            if tokens.size and int(tokens.max()) >= self.manifest["vocab_size"]:
                raise DataError(
                    f"{path}: damaged shard (token id {int(tokens.max())} is outside the "
                    f"vocabulary of {self.manifest['vocab_size']} in {self.data_dir / MANIFEST})"
                )
            self._tokens[shard] = tokens
        return self._tokens[shard]

    def _layout(self, epoch: int, shard: int) -> tuple[np.ndarray, np.ndarray]:
        """(cum, shift) of a shard's documents in this epoch's order: document j covers
        [cum[j], cum[j+1]) of the shard's stream and its token at stream position p is
        tokens[p + shift[j]]."""
        key = (epoch, shard)
        if key not in self._layouts:
            offsets = load_doc_offsets(self.paths[shard])  # (D + 1,)
            starts = offsets[:-1]
            n = len(starts)
            perm = self._rng(epoch, shard).permutation(n) if self.shuffle else np.arange(n)
            cum = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(np.diff(offsets)[perm], out=cum[1:])
            self._layouts[key] = (cum, starts[perm] - cum[:-1])
            if len(self._layouts) > LAYOUT_CACHE:
                self._layouts.popitem(last=False)
        return self._layouts[key]

    def _read(self, a: int, b: int) -> np.ndarray:
        """Tokens [a, b) of the current epoch's stream as int64 (b <= tokens_in_split)."""
        out = np.empty(b - a, dtype=np.int64)
        order, starts = self._order(self.epoch)
        k = int(np.searchsorted(starts, a, side="right")) - 1
        done = 0
        while done < len(out):
            shard = int(order[k])
            lo = a + done - int(starts[k])  # shard-local stream range [lo, hi)
            hi = min(b, int(starts[k + 1])) - int(starts[k])
            tokens = self._shard(shard)
            if self.shuffle:
                cum, shift = self._layout(self.epoch, shard)
                d0 = int(np.searchsorted(cum, lo, side="right")) - 1
                d1 = int(np.searchsorted(cum, hi, side="left"))
                spans = np.diff(np.clip(cum[d0 : d1 + 1], lo, hi))
                index = np.arange(lo, hi) + np.repeat(shift[d0:d1], spans)
                out[done : done + hi - lo] = tokens[index]
            else:
                out[done : done + hi - lo] = tokens[lo:hi]
            done += hi - lo
            k += 1
        return out
