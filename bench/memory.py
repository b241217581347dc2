"""Benchmark: peak memory of one forward + backward of the 124M model, old loss against new.

    python bench/memory.py               # gpt2 preset (vocab padded to 50,304), B=2, T=1024
    python bench/memory.py --batch-size 1 --seq-len 512

Two ways to compute the same loss on the same weights and batch, on CPU, float32:
- peer (the seed's loss): full logits (B, T, 50,304), the padded columns sliced off (a copy in
  the backward), F.cross_entropy on them;
- ours: GPT.forward with targets, which never materialises the logits (gpt/model/loss.py `lm_loss`).

How memory is measured, and why this way: each variant runs in a fresh child process, which
builds the model and batch, records its resident set size (RSS), runs forward + backward once,
and reports the peak RSS (getrusage's ru_maxrss) minus that starting RSS. PyTorch's CPU
allocator hands large tensors straight to and from the operating system (mmap/munmap), so RSS
follows the live tensors; a fresh process per variant keeps one variant's freed pages and
allocator caches out of the other's figure; tracemalloc would see none of torch's memory. The
increment covers activations, gradients and the loss's temporaries, and the two variants share
everything but the loss. Linux only (ru_maxrss in KiB). Target (issue 9): the loss no longer
holds the full logits several times over.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # import the package, not bench/ siblings

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench._common import machine, table  # noqa: E402
from gpt.cli import UserError, run  # noqa: E402
from gpt.config import model_preset  # noqa: E402
from gpt.model.gpt2 import GPT  # noqa: E402
from gpt.model.loss import loss_chunk_rows  # noqa: E402

VARIANTS = ("peer", "ours")


def current_rss() -> int:
    """This process's resident set size now, in bytes (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize()


def peak_rss() -> int:
    """This process's peak resident set size so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def seed_loss(model: GPT, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The seed's forward with targets: full padded logits, real columns sliced, cross-entropy."""
    logits = model.lm_head(model.hidden(idx))  # (B, T, padded V)
    logits = logits[..., : model.config.vocab_size]  # (B, T, V), a view copied in the backward
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


def measure(variant: str, batch_size: int, seq_len: int) -> dict[str, float]:
    """In this (fresh) process: the RSS increase of one forward + backward of `variant`."""
    torch.manual_seed(0)
    model = GPT(model_preset("gpt2", pad_vocab_multiple=64))
    idx = torch.randint(0, model.config.vocab_size, (batch_size, seq_len + 1))
    x, y = idx[:, :-1], idx[:, 1:]
    before = current_rss()
    loss = seed_loss(model, x, y) if variant == "peer" else model(x, y)[1]
    assert loss is not None
    loss.backward()
    return {"loss": loss.item(), "peak_bytes": peak_rss() - before}


def run_child(variant: str, args: argparse.Namespace) -> dict[str, float]:
    """Run `measure` for one variant in a new Python process; its JSON result."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        variant,
        f"--batch-size={args.batch_size}",
        f"--seq-len={args.seq_len}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{variant} measurement failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batch_size < 1 or not 1 <= args.seq_len <= 1024:
        raise UserError("--batch-size must be >= 1 and --seq-len in 1..1024")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.batch_size, args.seq_len)))
        return 0
    results = {v: run_child(v, args) for v in VARIANTS}
    peer, ours = results["peer"]["peak_bytes"], results["ours"]["peak_bytes"]
    n = args.batch_size * args.seq_len
    logits_mib = n * 50_304 * 4 / 2**20
    chunk = loss_chunk_rows(50_257)
    print(f"machine: {machine()}")
    print(
        f"model: gpt2 preset (124M, vocab 50,257 padded to 50,304), float32, CPU; batch "
        f"{args.batch_size} x {args.seq_len} = {n:,} positions; full logits {logits_mib:,.0f} "
        f"MiB; our loss in chunks of {chunk:,} positions; one forward + backward per process"
    )
    rows = [
        [v, f"{results[v]['peak_bytes'] / 2**20:,.0f}", f"{results[v]['loss']:.4f}"]
        for v in VARIANTS
    ]
    print(table(["loss", "peak memory above start (MiB)", "loss value"], rows))
    print(f"peer / ours: {peer / ours:.2f}x; saved {(peer - ours) / 2**20:,.0f} MiB")
    return 0


if __name__ == "__main__":
    run(main)
