"""Benchmark: one training step (forward + backward + AdamW) of GPT against transformers.

    python bench/model.py                          # 6 layers, 384 wide, B=8, T=128, CPU
    python bench/model.py --batch-size 4 --seq-len 128 --steps 5

The same random weights and batch in our GPT and in transformers' GPT2LMHeadModel with SDPA
attention and dropout off (ours has none), both in eager mode, float32. One step is
zero_grad, forward with the loss (ours: targets; transformers: labels), backward and
torch.optim.AdamW. Steps alternate (ours, theirs) after warm-up steps; the median is reported,
with the initial loss on the same targets as a check that both compute the same thing.
Target (issue 2): at least parity (ratio >= 1).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # import the package, not bench/ siblings

import torch  # noqa: E402

from bench._common import machine, median, table, timed  # noqa: E402
from gpt.cli import UserError, run  # noqa: E402
from gpt.config import GPTConfig  # noqa: E402
from gpt.hf import state_to_hf  # noqa: E402
from gpt.model.gpt2 import GPT  # noqa: E402


def hf_model(config: GPTConfig, ours: GPT) -> torch.nn.Module:
    """transformers' GPT2LMHeadModel (SDPA, no dropout) holding our model's weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_config = GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        attn_implementation="sdpa",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(hf_config)
    assert model.config._attn_implementation == "sdpa"
    missing, unexpected = model.load_state_dict(state_to_hf(ours), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    return model.train()


def train_step(
    model: torch.nn.Module, opt: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor]
) -> float:
    opt.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    opt.step()
    return loss.item()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--n-embd", type=int, default=384)
    p.add_argument("--n-head", type=int, default=6)
    p.add_argument("--vocab-size", type=int, default=50257)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="timed steps of each model")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps of each model first")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if min(args.batch_size, args.seq_len, args.steps) < 1 or args.warmup < 0:
        raise UserError("--batch-size, --seq-len and --steps must be >= 1, --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = GPTConfig(
        block_size=max(1024, args.seq_len),
        vocab_size=args.vocab_size,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
    )
    torch.manual_seed(0)
    ours = GPT(config).train()
    theirs = hf_model(config, ours)
    tokens = torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len + 1))
    x, y = tokens[:, :-1], tokens[:, 1:]
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-4)

    def ours_loss() -> torch.Tensor:
        return ours(x, y)[1]  # type: ignore[return-value]

    def theirs_loss() -> torch.Tensor:
        return theirs(input_ids=x, labels=x).loss  # the same forward; labels shifted inside

    with torch.no_grad():  # the same loss on the same targets (tokens shifted inside)
        ref_ours, ref_theirs = (
            ours_loss().item(),
            theirs(input_ids=tokens, labels=tokens).loss.item(),
        )
    print(f"machine: {machine()}")
    print(
        f"model: {args.n_layer} layers, {args.n_embd} wide, vocab {args.vocab_size}, "
        f"{ours.num_params():,} parameters, float32, eager; batch {args.batch_size} x "
        f"{args.seq_len} tokens; median of {args.steps} alternating steps"
    )
    for _ in range(args.warmup):
        train_step(ours, opt_ours, ours_loss)
        train_step(theirs, opt_theirs, theirs_loss)
    t_ours, t_theirs = [], []
    for _ in range(args.steps):
        t_ours.append(timed(train_step, ours, opt_ours, ours_loss))
        t_theirs.append(timed(train_step, theirs, opt_theirs, theirs_loss))
    n_tokens = args.batch_size * args.seq_len
    a, b = median(t_ours), median(t_theirs)
    rows = [
        ["train step (ms)", f"{a * 1e3:.0f}", f"{b * 1e3:.0f}", f"{b / a:.2f}x"],
        ["tokens/s", f"{n_tokens / a:.0f}", f"{n_tokens / b:.0f}", f"{b / a:.2f}x"],
        ["initial loss", f"{ref_ours:.4f}", f"{ref_theirs:.4f}", "-"],
    ]
    print(table(["measure", "ours", "peer", "ratio (peer time / ours)"], rows))
    print("peer: transformers GPT2LMHeadModel, attn_implementation='sdpa', dropout 0")
    return 0


if __name__ == "__main__":
    run(main)
