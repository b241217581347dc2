"""Benchmark: end-to-end preparation (documents -> shards on disk) against bare tiktoken.

    python bench/prepare.py                    # ~20 MB of text, all cores
    python bench/prepare.py --mb 50 --workers 8

Ours: `prepare_dataset` with the GPT-2 tokeniser and `--workers` processes, from the list of
documents to the shards and manifest written (worker start-up included).
Peer: tiktoken's GPT-2 encoding, `encode_ordinary_batch(docs, num_threads=workers)` on the same
documents, nothing written. Target: ours >= 0.9x the peer's tokens/s. For scale, also tiktoken
on one thread and that figure times the workers (perfect scaling). The runs alternate (peers,
ours, peers, ...) so that all meet the same load on a shared machine; best round kept.

The text: the "python-docs" source and, when present, the shared corpora (Tiny Shakespeare,
WikiText-2) cut into documents, cycled until --mb megabytes. GPT-2 files: $GPT2_BPE_DIR, else
../shared/data/gpt2.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # import the package, not bench/ siblings

import numpy as np  # noqa: E402
import tiktoken  # noqa: E402
import tiktoken.load  # noqa: E402
from tiktoken_ext.openai_public import r50k_pat_str  # noqa: E402

from bench._common import cycle_to, machine  # noqa: E402
from gpt.cli import UserError, run  # noqa: E402
from gpt.data.prepare import prepare_dataset  # noqa: E402
from gpt.data.shards import load_shard  # noqa: E402
from gpt.data.sources import iter_documents  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def documents(shared: Path) -> list[str]:
    """python-docs, plus the shared corpora cut into documents (Shakespeare every 60 lines,
    WikiText at its article titles) when they are there."""
    docs = list(iter_documents("python-docs"))
    corpora = shared / "corpora"
    if corpora.is_dir():
        lines = (corpora / "tinyshakespeare.txt").read_text(encoding="utf-8").splitlines(True)
        docs += ["".join(lines[i : i + 60]) for i in range(0, len(lines), 60)]
        for name in ("wikitext2_valid.txt", "wikitext2_test.txt"):
            text = (corpora / name).read_text(encoding="utf-8")
            docs += re.split(r"\n(?= = [^=].* = \n)", text)
    return [d for d in docs if d.strip()]


def gpt2_encoding(bpe_dir: Path) -> tiktoken.Encoding:
    """tiktoken's GPT-2 encoding from the original files (what tiktoken.get_encoding builds)."""
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(bpe_dir / "vocab.bpe"),
        encoder_json_file=str(bpe_dir / "encoder.json"),
    )
    return tiktoken.Encoding(
        "gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256}
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python bench/prepare.py",
        description="End-to-end prepare_dataset tokens/s against bare tiktoken batch encoding.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--mb", type=float, default=20.0, help="megabytes of text")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each, best kept")
    parser.add_argument("--shard-size", type=int, default=1_000_000, help="tokens per shard")
    parser.add_argument("--data", default=str(SHARED), help="the shared data folder")
    args = parser.parse_args(argv)
    if args.mb <= 0 or args.workers < 1 or args.rounds < 1 or args.shard_size < 1:
        raise UserError("--mb, --workers, --rounds and --shard-size must be positive")
    bpe_dir = Path(os.environ.get("GPT2_BPE_DIR") or Path(args.data) / "gpt2")
    if not (bpe_dir / "vocab.bpe").is_file():
        raise UserError(f"no GPT-2 files in {bpe_dir}: set GPT2_BPE_DIR")
    os.environ["GPT2_BPE_DIR"] = str(bpe_dir)

    distinct = documents(Path(args.data))
    docs = cycle_to(distinct, int(args.mb * 1e6))
    n_bytes = sum(len(d.encode()) for d in docs)
    print(f"text: {len(docs):,} documents, {n_bytes / 1e6:.1f} MB ({len(distinct):,} distinct)")
    print("machine: " + machine(f"tiktoken {tiktoken.__version__}", f"numpy {np.__version__}"))
    print(f"workers: {args.workers}, shard size {args.shard_size:,} tokens")

    enc = gpt2_encoding(bpe_dir)
    best_peer = best_single = best_ours = float("inf")
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        for r in range(args.rounds):
            start = time.perf_counter()
            ids = enc.encode_ordinary_batch(docs, num_threads=args.workers)
            best_peer = min(best_peer, time.perf_counter() - start)
            n_peer = sum(len(x) for x in ids) + len(ids)  # + one eot per document, as stored
            del ids
            start = time.perf_counter()
            for doc in docs:
                enc.encode_ordinary(doc)
            best_single = min(best_single, time.perf_counter() - start)
            out = Path(tmp) / f"round{r}"
            start = time.perf_counter()
            manifest = prepare_dataset(
                docs,
                out,
                "gpt2",
                shard_size=args.shard_size,
                workers=args.workers,
                source="bench",
                progress=False,
            )
            best_ours = min(best_ours, time.perf_counter() - start)
        n_ours = manifest["tokens"]
        first = load_shard(out / manifest["shards"][0]["file"])
        same = n_ours == n_peer and first[1:20].tolist() == enc.encode_ordinary(docs[0])[:19]
    ours = n_ours / best_ours
    peers = [
        (f"tiktoken encode_ordinary_batch, {args.workers} threads", n_peer / best_peer),
        ("tiktoken encode_ordinary, 1 thread", n_peer / best_single),
        (f"  the same x {args.workers} (perfect scaling)", n_peer / best_single * args.workers),
    ]
    shards = len(manifest["shards"])
    print(f"\nours: prepare_dataset, {args.workers} workers, {n_ours:,} tokens -> {shards} shards")
    print(f"\n| {'peer':<46} | {'ours tok/s':>10} | {'peer tok/s':>10} | {'ratio':>6} |")
    print(f"|{'-' * 48}|{'-' * 12}|{'-' * 12}|{'-' * 8}|")
    for label, peer in peers:
        print(f"| {label:<46} | {ours / 1e6:>9.2f}M | {peer / 1e6:>9.2f}M | {ours / peer:>5.2f}x |")
    print(
        "\nours = end to end, shards and manifest written; peers = bare tiktoken on the same "
        "documents, nothing written.\nTarget: ratio >= 0.9 against the first peer (same number "
        f"of workers). Same token count as the peer: {'yes' if same else 'NO'}"
    )
    return 0


if __name__ == "__main__":
    run(main)
