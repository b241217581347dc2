"""Benchmark: loader tokens/s for B=16, T=1024 in one process, against the seed-style loaders.

    python bench/dataloader.py                       # 2 shards of 16M tokens, one epoch
    python bench/dataloader.py --shard-tokens 100M --shards 2

The data: synthetic GPT-2-sized token shards (uint16, documents of fineweb-like lengths, each
starting with eot), written once in our format and as the seed's .npy files. Every loader reads
one epoch of the train shards, construction and shard loading included; runs alternate (peers,
ours) so that all meet the same load on a shared machine, best round kept.
- ours, shuffled: `gpt.data.loader.DataLoader` (shard and document shuffling on, memory-mapped).
- ours, in order: the same loader on the same shards as a val split (no shuffling).
- peer, sequential: build-nanogpt / seed style: np.load a shard, to int64 torch, slice views.
- peer, seed shuffle: the same plus the seed's document shuffle (split at eot, shuffle, cat).
Target: ours, shuffled >= 10M tokens/s.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # import the package, not bench/ siblings

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench._common import machine  # noqa: E402
from gpt.cli import UserError, run  # noqa: E402
from gpt.data.loader import DataLoader  # noqa: E402
from gpt.data.shards import (  # noqa: E402
    FORMAT_VERSION,
    MANIFEST,
    MANIFEST_FORMAT,
    shard_name,
    write_shard,
)
from gpt.fsio import write_json_atomic  # noqa: E402

EOT = 50256
TARGET = 10e6


def write_data(out: Path, n_shards: int, shard_tokens: int, seed: int = 0) -> list[Path]:
    """`n_shards` train shards in our format (plus a manifest) and the same tokens as seed-style
    .npy files; returns the .npy paths."""
    rng = np.random.default_rng(seed)
    entries, npy = [], []
    for i in range(n_shards):
        lengths = np.clip(rng.lognormal(6.5, 1.0, size=shard_tokens // 200), 16, 50_000)
        lengths = lengths.astype(np.int64)
        n_docs = int(np.searchsorted(np.cumsum(lengths), shard_tokens))
        lengths = lengths[:n_docs]
        tokens = rng.integers(0, EOT, size=int(lengths.sum()), dtype=np.uint16)
        tokens[np.cumsum(lengths) - lengths] = EOT
        name = shard_name(i, "train")
        write_shard(out / name, [tokens], lengths)
        entries.append({"file": name, "split": "train", "tokens": len(tokens), "docs": n_docs})
        npy.append(out / f"seed_train_{i:04d}.npy")
        np.save(npy[-1], tokens)
    write_json_atomic(
        out / MANIFEST,
        {
            "format": MANIFEST_FORMAT,
            "format_version": FORMAT_VERSION,
            "source": "bench",
            "tokeniser": "gpt2",
            "tokeniser_name": "gpt2",
            "fingerprint": "0" * 64,
            "eot": EOT,
            "vocab_size": 50257,
            "dtype": "uint16",
            "complete": True,
            "shards": entries,
        },
    )
    return npy


def val_view(data: Path, out: Path) -> None:
    """The same shards listed as the val split (read in order, no shuffling)."""
    out.mkdir()
    manifest = json.loads((data / MANIFEST).read_text())
    for s in manifest["shards"]:
        (out / s["file"]).symlink_to(data / s["file"])
        s["split"] = "val"
    write_json_atomic(out / MANIFEST, manifest)


class SeedLoader:
    """The seed's loader, reduced to one process: whole shards as int64 tensors, optionally with
    its document shuffle (split at every eot into a list, shuffle, concatenate)."""

    def __init__(self, files: list[Path], B: int, T: int, shuffle: bool):
        self.files, self.B, self.T, self.shuffle = files, B, T, shuffle
        self.rng = random.Random(1337)
        self.shard = 0
        self.tokens = self.load(files[0])
        self.pos = 0

    def load(self, path: Path) -> torch.Tensor:
        tokens = torch.tensor(np.load(path).astype(np.int32), dtype=torch.long)
        if not self.shuffle:
            return tokens
        ends = (torch.where(tokens == EOT)[0]).tolist()[1:] + [len(tokens)]
        starts = [0, *ends[:-1]]
        docs = [tokens[a:b] for a, b in zip(starts, ends, strict=True)]
        self.rng.shuffle(docs)
        return torch.cat(docs)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        B, T = self.B, self.T
        buf = self.tokens[self.pos : self.pos + B * T + 1]
        x, y = buf[:-1].view(B, T), buf[1:].view(B, T)
        self.pos += B * T
        if self.pos + B * T + 1 > len(self.tokens):
            self.shard = (self.shard + 1) % len(self.files)
            self.tokens = self.load(self.files[self.shard])
            self.pos = 0
        return x, y


def timed_epoch(make: Callable[[], object], n_batches: int) -> float:
    """Seconds to build a loader and take `n_batches` batches from it."""
    start = time.perf_counter()
    loader = make()
    for _ in range(n_batches):
        x, y = loader.next_batch()  # type: ignore[attr-defined]
    assert x.dtype == torch.int64
    return time.perf_counter() - start


def count(text: str) -> int:
    scale = {"K": 10**3, "M": 10**6}.get(text[-1:].upper(), 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python bench/dataloader.py",
        description="Loader tokens/s (B=16, T=1024) against seed-style loaders.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--shards", type=int, default=2, help="train shards")
    parser.add_argument("--shard-tokens", type=count, default="16M", help="tokens per shard")
    parser.add_argument("--batch-size", type=int, default=16, help="B")
    parser.add_argument("--seq-len", type=int, default=1024, help="T")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each, best kept")
    args = parser.parse_args(argv)
    B, T = args.batch_size, args.seq_len
    if min(args.shards, args.shard_tokens, B, T, args.rounds) < 1:
        raise UserError("all counts must be positive")
    if args.shard_tokens < 4 * B * T:
        raise UserError(f"--shard-tokens must be at least 4 batches ({4 * B * T})")
    print("machine: " + machine(f"numpy {np.__version__}"))
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        npy = write_data(data, args.shards, args.shard_tokens)
        val_view(data, Path(tmp) / "val")
        tokens = DataLoader(data, B, T).tokens_in_split
        n_batches = (tokens - 1) // (B * T)
        n_seed = sum((len(np.load(f, mmap_mode="r")) - 1) // (B * T) for f in npy)
        print(f"data: {args.shards} shards, {tokens:,} tokens; B={B}, T={T}: one epoch each\n")
        loaders: list[tuple[str, Callable[[], object], int]] = [
            ("peer, sequential (np.load + slicing)", lambda: SeedLoader(npy, B, T, False), n_seed),
            ("peer, seed document shuffle", lambda: SeedLoader(npy, B, T, True), n_seed),
            ("ours, shuffled (train)", lambda: DataLoader(data, B, T), n_batches),
            ("ours, in order (val)", lambda: DataLoader(Path(tmp) / "val", B, T, "val"), n_batches),
        ]
        best = {name: float("inf") for name, _, _ in loaders}
        for _ in range(args.rounds):
            for name, make, n in loaders:
                best[name] = min(best[name], timed_epoch(make, n) / (n * B * T))
    rate = {name: 1 / s for name, s in best.items()}
    ours = rate["ours, shuffled (train)"]
    print(f"| {'loader':<38} | {'tokens/s':>9} | {'ours shuffled / it':>18} |")
    print(f"|{'-' * 40}|{'-' * 11}|{'-' * 20}|")
    for name, r in rate.items():
        print(f"| {name:<38} | {r / 1e6:>8.1f}M | {ours / r:>17.2f}x |")
    print(f"| {'target':<38} | {TARGET / 1e6:>8.1f}M | {ours / TARGET:>17.2f}x |")
    return 0


if __name__ == "__main__":
    run(main)
