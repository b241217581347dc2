"""Benchmark: generation tokens/s of our `generate` against transformers' generate, same weights.

    python bench/generate.py                      # 6 layers, 384 wide, 50,257 tokens, CPU
    python bench/generate.py --batches 1 --new-tokens 64 --recompute-tokens 0

A random 6-layer, 384-wide GPT-2 with GPT-2's vocabulary, greedy decoding of --new-tokens
tokens after a --prompt-len prompt (transformers forced to the same length with
min_new_tokens), in float32 and then with both models' weights in bfloat16 (--dtypes). Runs
alternate (ours, theirs) so that both meet the same machine load, and the best round of each is
kept (on a shared machine the least disturbed one); the greedy tokens are compared: in float32
they must be identical, in bfloat16 the two round differently and a near-tie can go either way,
so the table gives the share of identical tokens.

Decoding reads every weight once per step, for the whole batch, so memory bandwidth bounds it:
the table gives tokens/s as a fraction of batch x bandwidth / weight bytes, the bandwidth
measured in the same run (sum of a 512 MB tensor). (The bound leaves out the KV cache's reads,
a few percent here, so no implementation reaches 100%.) Last, ours with the KV cache against
recomputing the whole context every step (the seed's and nanoGPT's way: all positions through
the blocks, the lm_head on the last one only) over --recompute-tokens new tokens.

--layouts adds a table of ours alone in float32 through each of CPU decoding's weight layouts
(gpt/model/cpu_decode.py: the layers as they are, an input-major lm_head, every weight split over
the threads, oneDNN's packed copies) at each batch size, against the layers as they are, marking
the one this CPU's rule picks: the measurement behind that rule, to rerun on another CPU.
Targets (issue 2): >= 2x transformers at batch 1 and 8; issue 16: >= 1.5x at batch 1 and >= 2x at
8 on AVX2 and on AMX CPUs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # import the package, not bench/ siblings

import torch  # noqa: E402

from bench._common import machine, read_bandwidth, table, timed  # noqa: E402
from gpt.cli import UserError, run  # noqa: E402
from gpt.config import GPTConfig  # noqa: E402
from gpt.hf import state_to_hf  # noqa: E402
from gpt.model.cpu_decode import LAYOUTS, layout_for, packing_available  # noqa: E402
from gpt.model.generate import generate  # noqa: E402
from gpt.model.gpt2 import GPT  # noqa: E402


def build(config: GPTConfig, seed: int = 0) -> tuple[GPT, torch.nn.Module]:
    """Our model and transformers' GPT2LMHeadModel (SDPA attention) with the same weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    ours = GPT(config).eval()
    hf_config = GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        attn_implementation="sdpa",
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    theirs = GPT2LMHeadModel(hf_config).eval()
    assert theirs.config._attn_implementation == "sdpa"
    missing, unexpected = theirs.load_state_dict(state_to_hf(ours), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    return ours, theirs


def hf_generate(model: torch.nn.Module, idx: torch.Tensor, new: int) -> torch.Tensor:
    with torch.inference_mode():
        return model.generate(
            idx,
            attention_mask=torch.ones_like(idx),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
        )


@torch.inference_mode()
def recompute_generate(model: GPT, idx: torch.Tensor, new: int) -> torch.Tensor:
    """Greedy decoding without a cache: the whole (cropped) context through the blocks every
    step, the lm_head on the last position only (nanoGPT's inference path)."""
    for _ in range(new):
        ctx = idx[:, -model.config.block_size :]
        logits = model.logits(model.hidden(ctx)[:, -1])  # (B, V)
        idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
    return idx


def weight_bytes(model: GPT) -> int:
    """Bytes read per decoding step: every weight once, the lookup tables excepted (GPT-2's
    position table: one row)."""
    n = model.num_params() - sum(w.numel() for w in model.lookup_tables)
    return n * model.lm_head.weight.element_size()


def same_tokens(ours: GPT, theirs: torch.nn.Module, idx: torch.Tensor) -> str:
    """How many of 16 greedy new tokens the two models agree on: "yes" for all."""
    a = generate(ours, idx, 16, temperature=0)[:, idx.size(1) :]
    b = hf_generate(theirs, idx, 16)[:, idx.size(1) :]
    share = (a == b).float().mean().item()
    return "yes" if share == 1 else f"{share:.0%}"


def batch_row(
    ours: GPT, theirs: torch.nn.Module, B: int, dtype: str, bound: float, args: argparse.Namespace
) -> list[str]:
    """One table row: both models decoding B sequences, alternating rounds, the best of each."""
    idx = torch.randint(0, args.vocab_size, (B, args.prompt_len))
    generate(ours, idx, 4, temperature=0)  # warm-up: allocator, threads
    hf_generate(theirs, idx, 4)
    same = same_tokens(ours, theirs, idx)
    t_ours, t_theirs = [], []
    for _ in range(args.rounds):
        t_ours.append(timed(generate, ours, idx, args.new_tokens, temperature=0))
        t_theirs.append(timed(hf_generate, theirs, idx, args.new_tokens))
    ours_tps = B * args.new_tokens / min(t_ours)
    theirs_tps = B * args.new_tokens / min(t_theirs)
    return [
        f"generate, batch {B}, {dtype}",
        f"{ours_tps:.1f}",
        f"{theirs_tps:.1f}",
        f"{ours_tps / theirs_tps:.2f}x",
        f"{ours_tps / (B * bound):.0%} / {theirs_tps / (B * bound):.0%}",
        same,
    ]


def recompute_row(ours: GPT, args: argparse.Namespace) -> list[str]:
    """Ours with the KV cache against recomputing the whole context, batch 1."""
    idx = torch.randint(0, args.vocab_size, (1, args.prompt_len))
    n = args.recompute_tokens
    t_cache = timed(generate, ours, idx, n, temperature=0)
    t_full = timed(recompute_generate, ours, idx, n)
    same = torch.equal(generate(ours, idx, 32, temperature=0), recompute_generate(ours, idx, 32))
    return [
        f"KV cache vs recompute, batch 1, {n} new",
        f"{n / t_cache:.1f}",
        f"{n / t_full:.1f}",
        f"{t_full / t_cache:.2f}x",
        "-",
        "yes" if same else "NO",
    ]


def layout_rows(ours: GPT, B: int, args: argparse.Namespace) -> list[list[str]]:
    """Ours through each CPU decoding layout at batch B, alternating rounds, the best of each,
    against the layers as they are; the greedy tokens compared with the layers'."""
    names = [name for name in LAYOUTS if name != "packed" or packing_available()]
    idx = torch.randint(0, args.vocab_size, (B, args.prompt_len))
    tokens = {name: generate(ours, idx, 16, temperature=0, layout=name) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            times[name].append(
                timed(generate, ours, idx, args.new_tokens, temperature=0, layout=name)
            )
    chosen = layout_for(ours, B)
    plain = min(times["layers"])
    return [
        [
            f"batch {B}, {name}" + (" (the rule's)" if name == chosen else ""),
            f"{B * args.new_tokens / min(times[name]):.1f}",
            f"{plain / min(times[name]):.2f}x",
            "yes" if torch.equal(tokens[name], tokens["layers"]) else "NO",
        ]
        for name in names
    ]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--n-embd", type=int, default=384)
    p.add_argument("--n-head", type=int, default=6)
    p.add_argument("--vocab-size", type=int, default=50257)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--dtypes", default="float32,bfloat16", help="float32 and/or bfloat16")
    p.add_argument("--rounds", type=int, default=3, help="alternating timed rounds per batch")
    p.add_argument("--recompute-tokens", type=int, default=512, help="0 skips that comparison")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--layouts", action="store_true", help="also time each CPU decoding layout")
    args = p.parse_args(argv)
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        raise UserError(f"--batches must be integers separated by commas: {args.batches}") from None
    if min(batches) < 1 or args.rounds < 1 or args.new_tokens < 1 or args.prompt_len < 1:
        raise UserError("batch sizes, --rounds, --new-tokens and --prompt-len must be >= 1")
    dtypes = args.dtypes.split(",")
    if not set(dtypes) <= {"float32", "bfloat16"}:
        raise UserError(f"--dtypes must be float32 and/or bfloat16, got {args.dtypes}")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = GPTConfig(
        block_size=1024,
        vocab_size=args.vocab_size,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
    )
    ours, theirs = build(config)
    print(f"machine: {machine()}")
    print(
        f"model: {args.n_layer} layers, {args.n_embd} wide, vocab {args.vocab_size}, "
        f"{ours.num_params():,} parameters; greedy, prompt {args.prompt_len}, "
        f"{args.new_tokens} new tokens, best of {args.rounds} alternating rounds"
    )
    bandwidth = read_bandwidth()
    print(f"read bandwidth {bandwidth / 1e9:.1f} GB/s")
    rows = []
    last = [recompute_row(ours, args)] if args.recompute_tokens else []  # float32, first
    layouts = [row for B in batches for row in layout_rows(ours, B, args)] if args.layouts else []
    for name in dtypes:  # both models converted in place, in the order given
        ours.to(getattr(torch, name))
        theirs.to(getattr(torch, name))
        bound = bandwidth / weight_bytes(ours)
        print(f"{name}: {weight_bytes(ours) / 1e6:.0f} MB of weights per step -> bound "
              f"{bound:.0f} steps/s (tokens/s at batch 1)")  # fmt: skip
        rows += [batch_row(ours, theirs, B, name, bound, args) for B in batches]
    rows += last
    headers = ["case", "ours tok/s", "peer tok/s", "ratio", "of bound (ours/peer)", "same tokens"]
    print(table(headers, rows))
    print("peer: transformers GPT2LMHeadModel.generate (sdpa); last row: recompute, no cache")
    if layouts:
        headers = ["float32, ours through", "tok/s", "vs the layers", "same tokens"]
        print(table(headers, layouts))
    return 0


if __name__ == "__main__":
    run(main)
