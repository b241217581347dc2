"""HellaSwag accuracy of one of our checkpoints or a Hugging Face causal LM.

    python hellaswag.py -m RUN/checkpoints/best            # one of our checkpoint directories
    python hellaswag.py -m gpt2 --limit 1000                # a Hugging Face hub name or directory
    python hellaswag.py -m EleutherAI/pythia-160m --data hellaswag_val.jsonl --output r.json

gpt/hellaswag/data.py downloads and reads the items, gpt/hellaswag/score.py scores them (the
metrics are explained there), gpt/hf.py loads the model. Reference figures (acc_norm, full val
split): GPT-2 124M 0.2955, GPT-3 125M 0.337.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from gpt.capability import describe, dtype_choice
from gpt.cli import UserError, option, parse_options, run
from gpt.distributed import resolve_device
from gpt.fsio import write_json_atomic
from gpt.hellaswag.data import load_examples, resolve_data
from gpt.hellaswag.score import (
    DEFAULT_BATCH_SIZE,
    ScoreFn,
    encode_examples,
    score_hf_batch,
    score_items,
    score_packed_batch,
    score_seed_batch,
    summarise,
)
from gpt.hf import LoadedModel, load_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
METRIC_NOTES = {
    "acc": "highest total log-likelihood of the ending tokens",
    "acc_norm": "lowest mean per-token loss of the ending (seed, build-nanogpt)",
    "acc_norm_bytes": "highest log-likelihood per UTF-8 byte of the ending "
    "(lm-evaluation-harness's acc_norm / acc_bytes)",
}


@dataclass
class HellaSwagOptions:
    """hellaswag.py: the model, the items and how to score them."""

    model: str = option(short="-m")
    """Our checkpoint dir, a HF model dir or a hub name."""
    data: str | None = None
    """Local HellaSwag jsonl (None: env HELLASWAG_FILE for the val split, else --split downloaded
    once into env HELLASWAG_DIR or ~/.cache/gpt-alpha/hellaswag)."""
    split: Literal["val", "train"] = "val"
    """Split to download."""
    limit: int | None = None
    """Score only the first N items (None: all)."""
    batch_size: int = DEFAULT_BATCH_SIZE
    """Items per forward pass; HF models take 4 rows per item."""
    seed_method: bool = False
    """Our models only: the seed's slow scoring, one item per forward (a baseline)."""
    device: str = "auto"
    """auto (cuda, else mps, else cpu), cpu, cuda:1, ..."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Compute dtype (bfloat16 is emulated, and slow, on CPUs without native bfloat16: the
    line on stderr says which this is)."""
    output: str | None = None
    """Also write results and per-item predictions to this JSON file."""


def check(opts: HellaSwagOptions) -> None:
    """Refuse settings no run can use."""
    if opts.limit is not None and opts.limit < 1:
        raise UserError(f"--limit must be >= 1, got {opts.limit}")
    if opts.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {opts.batch_size}")


def score_fn_for(lm: LoadedModel, seed_method: bool) -> ScoreFn:
    """Packed scoring for our GPT (or the seed's method), padded rows for a transformers model."""
    if lm.kind == "ours":
        return score_seed_batch if seed_method else score_packed_batch
    if seed_method:
        raise UserError("--seed-method applies to our checkpoints only")
    return score_hf_batch


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_options(
        HellaSwagOptions,
        argv,
        prog="hellaswag.py",
        description="HellaSwag accuracy (acc, acc_norm, acc_norm_bytes) of one of our "
        "checkpoints or a Hugging Face causal LM.",
    )
    check(opts)
    data = resolve_data(opts.data, opts.split)
    examples = load_examples(data, opts.limit)
    device = resolve_device(opts.device)
    dtype = DTYPES[opts.dtype]
    lm = load_model(opts.model, device, dtype, any_causal_lm=True)
    print(f"{describe(device)} -> scoring in {dtype_choice(dtype, device)}", file=sys.stderr)
    score_fn = score_fn_for(lm, opts.seed_method)
    items = encode_examples(examples, lm.encode_batch, lm.max_len, lm.prefix, lm.empty_ctx)
    t0 = time.perf_counter()
    autocast = lm.kind == "ours" and dtype != torch.float32
    with torch.autocast(device.type, dtype=dtype, enabled=autocast):
        ll = score_items(
            lm.model,
            items,
            score_fn,
            device=device,
            batch_size=opts.batch_size,
            progress=sys.stderr.isatty(),
        )
    seconds = time.perf_counter() - t0
    result = summarise(examples, items, ll)
    print(
        f"{lm.name}: {result['n']} items, acc {result['acc']:.4f}, "
        f"acc_norm {result['acc_norm']:.4f} (mean token loss), "
        f"acc_norm_bytes {result['acc_norm_bytes']:.4f} (per byte, lm-eval's acc_norm); "
        f"{result['cut']} cut to fit the context; {result['n'] / seconds:.1f} items/s"
    )
    if opts.output:
        write_json_atomic(Path(opts.output), report(lm.name, data, seconds, result))
    return 0


def report(name: str, data: Path, seconds: float, result: dict[str, Any]) -> dict[str, Any]:
    """The --output JSON: the model, the data, the time, what each metric means, the results."""
    return {
        "model": name,
        "data": str(data),
        "seconds": round(seconds, 3),
        "metrics": METRIC_NOTES,
        **result,
    }


if __name__ == "__main__":
    run(main)
