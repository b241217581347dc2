"""The one-command CPU demo: tokeniser, shards, training, samples, plots and export, offline.

    python train.py --preset demo

On a fresh machine with no network it
1. trains a 4,096-token byte-level BPE (GPTTokeniser.train) on the embedded `python-docs` corpus
   (the documentation inside this Python: pydoc topics and standard-library docstrings) into
   cache/demo/tokeniser.tkn, unless it is there;
2. tokenises the corpus into shards in cache/demo/data, unless they are there: its paragraphs
   as documents, in a fixed shuffled order, the first ~10% of the tokens as the validation split;
3. measures the unigram entropy of the validation split (nats/token): the loss of the best model
   that ignores context, the baseline the trained model must beat by at least 1 nat;
4. trains the `demo` model (4 layers, 256 wide, 4.3M parameters) with the `demo` recipe, printing
   samples at each evaluation, then writes RUN/plots, RUN/export (Hugging Face) and RUN/demo.json
   (its baseline, written before training so that the plots draw it, then its result).
Target: under 6 minutes end to end on 2 CPU cores.

A new demo replaces the previous demo run in its --out, and nothing else: a folder is a demo run
when its demo.json carries the demo's "format" mark; any other folder that is not empty is
refused, untouched. Rank 0 alone prepares and writes (the other ranks of a torchrun wait for it),
holding the run directory's lock (gpt/lock.py) from before the replacement to the last write.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpt import distributed, lock
from gpt.cli import UserError
from gpt.config import TrainConfig
from gpt.data.prepare import prepare_dataset
from gpt.data.shards import DataError, load_shard, read_manifest, split_shards, split_tokens
from gpt.data.sources import iter_documents
from gpt.data.tokeniser import GPTTokeniser, Tokeniser, get_tokeniser
from gpt.distributed import DistEnv, print0
from gpt.finish import finish_run
from gpt.fsio import read_json_object, write_json_atomic
from gpt.plot import DEMO_SUMMARY
from gpt.train.loop import TrainResult, train
from gpt.train.rundir import RunPlan

DEMO_SOURCE = "python-docs"
DEMO_VOCAB = 4096
DEMO_VAL_FRACTION = 0.1  # of the corpus's tokens, in whole documents
DEMO_SHUFFLE_SEED = 0
TARGET_MARGIN = 1.0  # nats/token below the unigram entropy that the model must reach
DEMO_FORMAT = "gpt-alpha-demo"  # demo.json's "format": the mark of a run the demo may replace

Say = Callable[[str], None]


@dataclass
class DemoResult:
    """What the demo measured."""

    unigram_entropy: float
    """Unigram entropy of the validation split, nats/token."""
    train: TrainResult
    seconds: float
    """Wall time of the whole demo."""

    @property
    def margin(self) -> float | None:
        """How far the final validation loss is below the unigram entropy (nats/token)."""
        val = self.train.final_val_loss
        return None if val is None else self.unigram_entropy - val


def demo_documents(max_docs: int | None = None) -> list[str]:
    """The corpus's paragraphs (blank-line separated) as documents, in a fixed shuffled order.

    A source document is a whole module's docstrings, and the pydoc topics come first: split and
    shuffled, the validation split (the first documents) is a random sample of held-out paragraphs
    from every part of the corpus, and a small model learns it within the demo's few minutes.
    """
    paragraphs = [
        p.strip()
        for doc in iter_documents(DEMO_SOURCE, max_docs=max_docs)
        for p in doc.split("\n\n")
        if p.strip()
    ]
    random.Random(DEMO_SHUFFLE_SEED).shuffle(paragraphs)
    return paragraphs


def ensure_tokeniser(path: Path, vocab_size: int, documents: Iterable[str], say: Say) -> Tokeniser:
    """The tokeniser saved at `path`, trained on `documents` first if it is not there."""
    if path.is_file():
        return GPTTokeniser(path)
    start = time.perf_counter()
    tok = GPTTokeniser.train(documents, vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(path)
    say(
        f"tokeniser: {tok.n_vocab:,} tokens trained in {time.perf_counter() - start:.1f}s -> {path}"
    )
    return tok


def ensure_data(data_dir: Path, tok: Tokeniser, documents: list[str], say: Say) -> dict[str, Any]:
    """The complete dataset in `data_dir`, prepared from `documents` first if needed."""
    try:
        return read_manifest(data_dir)
    except DataError:
        pass
    start = time.perf_counter()
    total = sum(1 + len(ids) for ids in tok.encode_ordinary_batch(documents))  # eot + text
    manifest = prepare_dataset(
        documents,
        data_dir,
        tok.spec,
        shard_size=total,
        val_tokens=int(total * DEMO_VAL_FRACTION),
        source=DEMO_SOURCE,
        progress=False,
    )
    train_tokens, val_tokens = (split_tokens(manifest, s) for s in ("train", "val"))
    say(
        f"data: {len(documents):,} documents, {train_tokens:,} train + {val_tokens:,} val "
        f"tokens in {time.perf_counter() - start:.1f}s -> {data_dir}"
    )
    return manifest


def unigram_entropy(data_dir: Path, split: str = "val") -> float:
    """Entropy in nats/token of the split's token frequencies: -sum p ln p."""
    manifest = read_manifest(data_dir)
    counts = np.zeros(manifest["vocab_size"], dtype=np.int64)
    for path in split_shards(data_dir, manifest, split):
        counts += np.bincount(load_shard(path), minlength=manifest["vocab_size"])
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def run_demo(
    cfg: TrainConfig,
    *,
    vocab_size: int = DEMO_VOCAB,
    max_docs: int | None = None,
    env: DistEnv | None = None,
    say: Say = print0,
    plan: RunPlan | None = None,
) -> DemoResult:
    """Tokeniser, data, baseline, training, samples, plots and export (see the module doc);
    `plan`: train.py's plan of the run (else planned from `cfg`)."""
    start = time.perf_counter()
    env = env or distributed.setup(cfg.device)
    run_dir = Path(cfg.out)
    distributed.decide_on_rank0(lambda: take_run_directory(cfg, say))
    try:
        entropy = distributed.decide_on_rank0(lambda: prepare(cfg, vocab_size, max_docs, say))
        say(
            f"baseline: unigram entropy of the val split {entropy:.4f} nats/token; "
            f"target: val loss below {entropy - TARGET_MARGIN:.4f}"
        )
        if distributed.is_main():  # the baseline first: the plots draw it
            write_summary(run_dir, {"unigram_entropy": entropy})
        trained = finish_run(train(cfg, env, plan), cfg, say)
        result = DemoResult(entropy, trained, time.perf_counter() - start)
        summarise(result, run_dir, say)
        return result
    finally:
        if distributed.is_main():
            lock.release(run_dir)


def take_run_directory(cfg: TrainConfig, say: Say) -> None:
    """Rank 0: lock the run directory for the demo's life and, for a new run, empty a previous
    demo run out of it; a folder that holds anything else is refused (UserError), untouched."""
    run_dir = Path(cfg.out)
    lock.acquire(run_dir)
    try:
        if cfg.resume is None:
            replace_previous_demo(run_dir, say)
    except BaseException:
        lock.release(run_dir)
        raise


def replace_previous_demo(run_dir: Path, say: Say) -> None:
    """Remove what a previous demo run left in `run_dir` (its lock file stays: it is held)."""
    entries = sorted(p for p in run_dir.iterdir() if p.name != lock.LOCK_FILE)
    if not entries:
        return
    if not is_demo_run(run_dir):
        raise UserError(
            f"{run_dir}: not empty and not a demo run (no {DEMO_SUMMARY} of the demo), so the "
            "demo leaves it alone; choose another --out"
        )
    say(f"{run_dir}: replacing the previous demo run")
    for path in entries:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def is_demo_run(run_dir: Path) -> bool:
    """Whether `run_dir` holds a demo run: its demo.json carries the demo's mark."""
    try:
        return read_json_object(run_dir / DEMO_SUMMARY).get("format") == DEMO_FORMAT
    except UserError:  # absent, unreadable or not a JSON object
        return False


def write_summary(run_dir: Path, fields: dict[str, Any]) -> None:
    """RUN/demo.json: `fields`, with the demo's mark."""
    write_json_atomic(run_dir / DEMO_SUMMARY, {"format": DEMO_FORMAT, **fields})


def prepare(cfg: TrainConfig, vocab_size: int, max_docs: int | None, say: Say) -> float:
    """Rank 0: the tokeniser and the data, made unless they are there; returns the unigram
    entropy of the val split."""
    data_dir = Path(cfg.data)
    documents: list[str] = []
    if (cfg.tokeniser != "gpt2" and not Path(cfg.tokeniser).is_file()) or not _complete(data_dir):
        documents = demo_documents(max_docs)
    if cfg.tokeniser == "gpt2":
        tok = get_tokeniser("gpt2")
    else:
        tok = ensure_tokeniser(Path(cfg.tokeniser), vocab_size, documents, say)
    ensure_data(data_dir, tok, documents, say)
    return unigram_entropy(data_dir)


def _complete(data_dir: Path) -> bool:
    try:
        read_manifest(data_dir)
    except DataError:
        return False
    return True


def summarise(result: DemoResult, run_dir: Path, say: Say) -> None:
    """The demo's last lines, and RUN/demo.json."""
    margin = result.margin
    val = result.train.final_val_loss
    if margin is None or val is None:
        say("no validation loss (the data has no val split)")
        return
    verdict = "ok" if margin >= TARGET_MARGIN else f"below the {TARGET_MARGIN:.0f}-nat target"
    say(
        f"final val loss {val:.4f} vs unigram entropy {result.unigram_entropy:.4f}: "
        f"{margin:.2f} nats/token better ({verdict})"
    )
    say(
        f"demo finished in {result.seconds:.0f}s; try: python inference.py --model {run_dir}/export"
    )
    if distributed.is_main():
        write_summary(
            run_dir,
            {
                "unigram_entropy": result.unigram_entropy,
                "final_val_loss": val,
                "margin": margin,
                "seconds": result.seconds,
            },
        )
