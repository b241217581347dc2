"""Benchmark: our GPTTokeniser against its peers on >= 20 MB of real text, in one run.

    python bench/tokeniser.py                  # 20 MB, vocabulary 32768, GPT-4 pattern
    python bench/tokeniser.py --train-rounds 3   # best of 3 trainings each (about 4 min)
    python bench/tokeniser.py --mb 50 --vocab-size 50257 --pattern gpt2

Peers, with the same pre-split pattern, the 256-byte alphabet and the same vocabulary:
- training: the `tokenizers` library's BpeTrainer alone (Rust). Target: ours <= 2x its time.
- encoding: tiktoken running the `tokenizers` trainer's vocabulary (ranks = its token ids), one
  thread (encode_ordinary per document) and batched (encode_ordinary_batch). Target: >= 0.9x.
- compression: bytes per token of the `tokenizers` trainer's own model. Target: within 1%.

The text: the shared corpora (Tiny Shakespeare, WikiText-2 valid and test), the HellaSwag
validation contexts and endings, and the "python-docs" source (the interpreter's own docs),
about 11 MB distinct, cycled until --mb megabytes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path[0] = str(Path(__file__).resolve().parents[1])  # import the package, not bench/ siblings

import tiktoken  # noqa: E402
import tokenizers  # noqa: E402
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers  # noqa: E402

from bench._common import cycle_to, machine  # noqa: E402
from gpt.cli import UserError, run  # noqa: E402
from gpt.data.bpe import ENDOFTEXT, PATTERNS, bytes_to_unicode  # noqa: E402
from gpt.data.sources import iter_documents  # noqa: E402
from gpt.data.tokeniser import GPTTokeniser  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def real_documents(shared: Path) -> list[str]:
    """Every distinct document we have: shared corpora, HellaSwag text, the python-docs source."""
    corpora = shared / "corpora"
    docs = (corpora / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n")
    for name in ("wikitext2_valid.txt", "wikitext2_test.txt"):
        docs += (corpora / name).read_text(encoding="utf-8").split("\n \n")
    with open(shared / "hellaswag" / "hellaswag_val.jsonl", encoding="utf-8") as f:
        for line in f:
            item = json.loads(line)
            docs.append(" ".join([item["ctx"], *item["endings"]]))
    docs += list(iter_documents("python-docs"))
    return [d for d in docs if d.strip()]


def timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """fn(*args) and its wall time in seconds."""
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def train_peer(docs: list[str], vocab_size: int, pattern: str) -> Tokenizer:
    """The `tokenizers` BpeTrainer with our settings (the special token is left out of it)."""
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,
        initial_alphabet=list(bytes_to_unicode().values()),
        show_progress=False,
    )
    hf.train_from_iterator(docs, trainer=trainer)
    return hf


def tiktoken_of(hf: Tokenizer, pattern: str) -> tiktoken.Encoding:
    """tiktoken running the trained vocabulary: rank = `tokenizers`' id (alphabet, then merges)."""
    char_byte = {c: b for b, c in bytes_to_unicode().items()}
    ranks = {bytes(char_byte[c] for c in t): i for t, i in hf.get_vocab().items()}
    return tiktoken.Encoding(
        name="peer", pat_str=pattern, mergeable_ranks=ranks, special_tokens={ENDOFTEXT: len(ranks)}
    )


def interleaved(
    rounds: int,
    chunks: list[list[str]],
    peer_fn: Callable[[list[str]], list[list[int]]],
    our_fn: Callable[[list[str]], list[list[int]]],
) -> tuple[tuple[list[list[int]], float], tuple[list[list[int]], float]]:
    """(ids, time) of each encoder over all chunks, where time sums each chunk's best of
    `rounds`. On a shared machine the two take turns chunk by chunk (who goes first alternates),
    so that both meet the same load."""
    best = [[float("inf")] * len(chunks) for _ in (0, 1)]
    ids: list[list[list[int]]] = [[], []]
    peer_fn(chunks[0]), our_fn(chunks[0])  # warm up: thread pools, caches
    for _ in range(rounds):
        ids = [[], []]
        for n, chunk in enumerate(chunks):
            for k in (0, 1) if n % 2 == 0 else (1, 0):
                result, t = timed((peer_fn, our_fn)[k], chunk)
                best[k][n] = min(best[k][n], t)
                ids[k] += result
    return (ids[0], sum(best[0])), (ids[1], sum(best[1]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python bench/tokeniser.py",
        description="Train and encode speed of GPTTokeniser against tokenizers and tiktoken.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--mb", type=float, default=20.0, help="megabytes of text")
    parser.add_argument("--vocab-size", type=int, default=32_768, help="ids, special included")
    parser.add_argument("--pattern", choices=sorted(PATTERNS), default="gpt4", help="pre-split")
    parser.add_argument("--threads", type=int, default=8, help="threads of the batched encode")
    parser.add_argument("--train-rounds", type=int, default=1, help="trainings, best kept")
    parser.add_argument("--rounds", type=int, default=3, help="encoding rounds, best kept")
    parser.add_argument("--data", default=str(SHARED), help="the shared data folder")
    args = parser.parse_args(argv)
    if args.mb <= 0 or args.vocab_size < 300 or min(args.rounds, args.train_rounds) < 1:
        raise UserError("--mb and the rounds must be positive, --vocab-size at least 300")
    if not (Path(args.data) / "corpora").is_dir():
        raise UserError(f"--data {args.data}: no corpora folder (the shared real data)")
    pattern = PATTERNS[args.pattern]

    distinct = real_documents(Path(args.data))
    docs = cycle_to(distinct, int(args.mb * 1e6))
    n_bytes = sum(len(d.encode()) for d in docs)
    distinct_mb = sum(len(d.encode()) for d in distinct) / 1e6
    print(f"text: {len(docs)} documents, {n_bytes / 1e6:.1f} MB ({distinct_mb:.1f} MB distinct)")
    versions = f"tiktoken {tiktoken.__version__}", f"tokenizers {tokenizers.__version__}"
    print("machine: " + machine(*versions))

    t_peer = t_ours = float("inf")
    for r in range(args.train_rounds):  # who goes first alternates; best time kept
        for k in (0, 1) if r % 2 == 0 else (1, 0):
            if k == 0:
                hf, t = timed(train_peer, docs, args.vocab_size, pattern)
                t_peer = min(t_peer, t)
            else:
                ours, t = timed(GPTTokeniser.train, docs, args.vocab_size, pattern)
                t_ours = min(t_ours, t)
    peer = tiktoken_of(hf, pattern)
    assert ours.n_vocab == peer.n_vocab == args.vocab_size, (ours.n_vocab, peer.n_vocab)

    rows = [(f"train to {args.vocab_size} ids (s)", t_ours, t_peer, t_peer / t_ours)]
    encoders = [
        (
            "encode, 1 thread (MB/s)",
            100,
            lambda c: [ours.encode_ordinary(d) for d in c],
            lambda c: [peer.encode_ordinary(d) for d in c],
        ),
        (
            f"encode, batch of {args.threads} threads (MB/s)",
            2000,
            lambda c: ours.encode_ordinary_batch(c, num_threads=args.threads),
            lambda c: peer.encode_ordinary_batch(c, num_threads=args.threads),
        ),
    ]
    for label, size, our_fn, peer_fn in encoders:
        chunks = [docs[i : i + size] for i in range(0, len(docs), size)]
        (peer_ids, t_p), (our_ids, t_o) = interleaved(args.rounds, chunks, peer_fn, our_fn)
        rows.append((label, n_bytes / 1e6 / t_o, n_bytes / 1e6 / t_p, t_p / t_o))
    n_ours = sum(len(ids) for ids in our_ids)
    n_peer = sum(len(e.ids) for e in hf.encode_batch(docs, add_special_tokens=False))
    rows.append(("bytes per token", n_bytes / n_ours, n_bytes / n_peer, n_peer / n_ours))
    our_id = {ours.token_bytes(i): i for i in range(ours.eot_token)}
    to_ours = [our_id[peer.decode_single_token_bytes(i)] for i in range(peer.eot_token)]
    same = all([to_ours[i] for i in p] == o for p, o in zip(peer_ids, our_ids, strict=True))

    print(f"\n| {'':<34} | {'ours':>9} | {'peer':>9} | {'speed-up':>8} |")
    print(f"|{'-' * 36}|{'-' * 11}|{'-' * 11}|{'-' * 10}|")
    for label, a, b, ratio in rows:
        print(f"| {label:<34} | {a:>9.2f} | {b:>9.2f} | {ratio:>7.2f}x |")
    print(
        "\npeers: training = tokenizers BpeTrainer; encoding = tiktoken with the trainer's "
        "vocabulary; bytes per token = the trainer's own model (tokenizers encode).\n"
        f"'speed-up' is peer time / our time (targets: training >= 0.5x, encoding >= 0.9x), "
        f"token count ratio for bytes per token (target within 1%).\n"
        f"the same tokens from ours and the peer tiktoken: {'yes' if same else 'NO'}"
    )
    return 0


if __name__ == "__main__":
    run(main)
