"""HellaSwag scoring speed: our packed scorer against the seed's method, same model, same items.

    python bench/hellaswag.py                      # 124M-shaped GPT, random weights, 40 items, CPU
    python bench/hellaswag.py --device cuda --examples 2000 --batch-size 64

The seed's method scores one item per forward pass: four rows `ctx + ending`, zero-padded to the
longest, logits and cross-entropy at every position. Ours packs each item's context and endings
into one sequence (context computed once), several items per row, several rows per pass, and
projects onto the vocabulary only where an ending token is predicted. Both produce the same
log-likelihoods (the table shows the largest difference). A Hugging Face GPT2LMHeadModel of the
same shape, scored by our HF path (padded rows), is a third row. Target: packed >= 2x seed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"

from bench._common import machine  # noqa: E402
from gpt.cli import UserError, run  # noqa: E402
from gpt.config import model_preset  # noqa: E402
from gpt.distributed import resolve_device  # noqa: E402
from gpt.hellaswag import score as hs  # noqa: E402
from gpt.hellaswag.data import N_ENDINGS, find_hellaswag_file, load_examples  # noqa: E402
from gpt.model.gpt2 import GPT  # noqa: E402


def interleaved(
    methods: list[tuple[object, hs.ScoreFn, int]], items: list[hs.Encoded], device: torch.device
) -> list[tuple[float, np.ndarray]]:
    """(items/s, log-likelihoods) per (model, score_fn, batch_size), after a warm-up. The methods
    take turns chunk by chunk, so a busy machine slows them alike."""
    chunk = max(bs for _, _, bs in methods)
    seconds = [0.0] * len(methods)
    lls = [np.zeros((len(items), N_ENDINGS)) for _ in methods]
    for model, fn, bs in methods:
        hs.score_items(model, items[:2], fn, device=device, batch_size=bs)
    for start in range(0, len(items), chunk):
        part = items[start : start + chunk]
        for j, (model, fn, bs) in enumerate(methods):
            t0 = time.perf_counter()
            lls[j][start : start + chunk] = hs.score_items(
                model, part, fn, device=device, batch_size=bs
            )
            seconds[j] += time.perf_counter() - t0
    return [(len(items) / s, ll) for s, ll in zip(seconds, lls, strict=True)]


def hf_twin(model: GPT) -> torch.nn.Module:
    """A transformers GPT2LMHeadModel with our model's shape and weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    hf = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=c.vocab_size,
            n_positions=c.block_size,
            n_embd=c.n_embd,
            n_layer=c.n_layer,
            n_head=c.n_head,
        )
    )
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    sd = {k: (v.t() if k.endswith(conv1d) else v) for k, v in model.state_dict().items()}
    hf.load_state_dict(sd, strict=False)
    return hf.eval()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="HellaSwag jsonl (default: HELLASWAG_FILE, cache, ../shared)")
    p.add_argument("--examples", type=int, default=40, help="items to score (default: 40)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=hs.DEFAULT_BATCH_SIZE,
        help=f"items per pass (default: {hs.DEFAULT_BATCH_SIZE})",
    )
    p.add_argument("--preset", default="gpt2", help="model shape, random weights (default: gpt2)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default: cpu)")
    p.add_argument("--no-hf", action="store_true", help="skip the Hugging Face row")
    args = p.parse_args(argv)
    if args.examples < 1 or args.batch_size < 1:
        raise UserError("--examples and --batch-size must be >= 1")
    data = find_hellaswag_file(args.data) or find_hellaswag_file(
        str(SHARED / "hellaswag" / "hellaswag_val.jsonl")
    )
    if data is None:
        raise UserError("no HellaSwag file: pass --data FILE (or set HELLASWAG_FILE)")
    if (SHARED / "gpt2").is_dir():
        os.environ.setdefault("GPT2_BPE_DIR", str(SHARED / "gpt2"))
    from gpt.data.tokeniser import get_tokeniser

    tok = get_tokeniser("gpt2")
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = GPT(model_preset(args.preset)).to(device).eval()
    examples = load_examples(data, args.examples)
    items = hs.encode_examples(
        examples, tok.encode_ordinary_batch, model.config.block_size, empty_ctx=tok.eot_token
    )
    methods: list[tuple[str, object, hs.ScoreFn, int]] = [
        ("seed method (1 item/pass, 4 padded rows)", model, hs.score_seed_batch, 1),
        ("packed (ours)", model, hs.score_packed_batch, args.batch_size),
    ]
    if not args.no_hf:
        hf = hf_twin(model).to(device)
        methods.append(("Hugging Face path (padded rows)", hf, hs.score_hf_batch, args.batch_size))
    results = interleaved([(m, fn, bs) for _, m, fn, bs in methods], items, device)
    seed_rate, seed_ll = results[0]
    n_padded = sum(4 * it.padded_len for it in items)
    n_packed = sum(it.packed_len for it in items)
    print(
        f"{len(items)} items, {args.preset} shape ({model.num_params() / 1e6:.0f}M params), "
        f"{device.type}, torch {torch.__version__}"
    )
    print(f"machine: {machine()}")
    print(f"tokens per item: seed {n_padded / len(items):.0f}, packed {n_packed / len(items):.0f}")
    print("| method | items/pass | items/s | vs seed | max abs diff of log-likelihoods |")
    print("|---|---:|---:|---:|---:|")
    for (name, _, _, bs), (rate, ll) in zip(methods, results, strict=True):
        diff = float(np.abs(ll - seed_ll).max())
        print(f"| {name} | {bs} | {rate:.2f} | {rate / seed_rate:.2f}x | {diff:.1e} |")
    return 0


if __name__ == "__main__":
    run(main)
