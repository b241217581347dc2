"""Benchmark: training tokens/s and MFU of train.py's step against transformers, on this machine.

    python bench/train.py                              # demo and 124M-shaped models, ~2.5 min
    python bench/train.py --models demo --steps 10 --no-compile

Ours is the step train.py runs: our GPT under torch.compile, AdamW with fused kernels (weight
decay on >= 2-D parameters), gradient clipping at 1.0. The peer is transformers'
GPT2LMHeadModel (SDPA attention, dropout 0, eager) with torch's default AdamW (foreach) and the
same clipping, holding the same weights and training on the same batch, both float32 (the
CPU training dtype). Steps alternate (ours, peer) after warm-up steps (ours compiles there: the
compile time is reported apart); medians are reported. MFU = training FLOPs per token (6N + 12LCT,
GPT.flops_per_token) x tokens/s / this machine's float32 matmul peak, measured in the same run.
Target (issue 5): ours >= 1.2x the peer's tokens/s.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # import the package, not bench/ siblings

import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench._common import machine, median, table  # noqa: E402
from gpt.cli import UsageError, run  # noqa: E402
from gpt.config import GPTConfig, TrainConfig, model_preset  # noqa: E402
from gpt.hf import state_to_hf  # noqa: E402
from gpt.model import GPT  # noqa: E402
from gpt.trainer import configure_optimizer, measure_matmul_flops  # noqa: E402

# (model preset, vocabulary, micro-batch rows, sequence length): the demo recipe's micro-batch,
# and a 124M-shaped model (GPT-2's vocabulary, padded to 50,304 in ours) on a small batch.
MODELS = {"demo": ("demo", 4096, 16, 64), "124M": ("gpt2", 50257, 2, 128)}


@dataclass
class Result:
    name: str
    params: int
    tokens: int
    ours_s: float
    peer_s: float
    compile_s: float
    flops_per_token: int

    def row(self, peak: float) -> list[str]:
        ours, peer = self.tokens / self.ours_s, self.tokens / self.peer_s
        return [
            self.name,
            f"{self.params / 1e6:.1f}M",
            f"{self.tokens}",
            f"{ours:,.0f}",
            f"{peer:,.0f}",
            f"{ours / peer:.2f}x",
            f"{100 * self.flops_per_token * ours / peak:.1f}%",
            f"{100 * self.flops_per_token * peer / peak:.1f}%",
            f"{self.compile_s:.0f}",
        ]


def peer_model(config: GPTConfig, ours: GPT) -> nn.Module:
    """transformers' GPT2LMHeadModel (SDPA, dropout 0) holding our model's weights."""
    from transformers import GPT2Config, GPT2LMHeadModel, logging

    logging.set_verbosity_error()
    hf = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=config.vocab_size,
            n_positions=config.block_size,
            n_embd=config.n_embd,
            n_layer=config.n_layer,
            n_head=config.n_head,
            attn_implementation="sdpa",
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=config.vocab_size - 1,
            eos_token_id=config.vocab_size - 1,
        )
    )
    missing, unexpected = hf.load_state_dict(state_to_hf(ours), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    return hf.train()


def step_fn(
    model: nn.Module, opt: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor]
) -> Callable[[], float]:
    """One training step: forward with the loss, backward, clip at 1.0, AdamW, zero_grad."""

    def step() -> float:
        start = time.perf_counter()
        loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    return step


def bench_model(name: str, steps: int, warmup: int, compile_on: bool) -> Result:
    preset, vocab, batch, seq = MODELS[name]
    config = model_preset(preset, vocab_size=vocab, pad_vocab_multiple=64)
    torch.manual_seed(0)
    ours = GPT(config).train()
    peer = peer_model(config, ours)
    tokens = torch.randint(0, vocab, (batch, seq + 1))
    x, y = tokens[:, :-1], tokens[:, 1:]
    compiled = torch.compile(ours) if compile_on else ours
    recipe = TrainConfig(max_lr=1e-4)
    ours_step = step_fn(
        ours,
        configure_optimizer(ours, recipe, torch.device("cpu")),
        lambda: compiled(x, y)[1],
    )
    peer_opt = torch.optim.AdamW(
        [
            {"params": [p for p in peer.parameters() if p.dim() >= 2], "weight_decay": 0.1},
            {"params": [p for p in peer.parameters() if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=1e-4,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    peer_step = step_fn(peer, peer_opt, lambda: peer(input_ids=x, labels=x).loss)
    start = time.perf_counter()
    ours_step()  # compiles
    compile_s = time.perf_counter() - start
    for _ in range(warmup):
        ours_step()
        peer_step()
    t_ours, t_peer = [], []
    for _ in range(steps):
        t_ours.append(ours_step())
        t_peer.append(peer_step())
    return Result(
        name=name,
        params=ours.num_params(),
        tokens=batch * seq,
        ours_s=median(t_ours),
        peer_s=median(t_peer),
        compile_s=compile_s,
        flops_per_token=ours.flops_per_token(seq),
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--models", default="demo,124M", help=f"comma-separated: {', '.join(MODELS)}")
    p.add_argument("--steps", type=int, default=5, help="timed steps of each model")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
    p.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=True, help="compile ours"
    )
    args = p.parse_args(argv)
    names = args.models.split(",")
    if unknown := [n for n in names if n not in MODELS]:
        raise UsageError(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
    if args.steps < 1 or args.warmup < 0:
        raise UsageError("--steps must be >= 1 and --warmup >= 0")
    print(f"machine: {machine()}")
    results = [bench_model(n, args.steps, args.warmup, args.compile) for n in names]
    peak = measure_matmul_flops(torch.device("cpu"), n=2048, seconds=2.0)
    print(f"float32 matmul peak (best 2048x2048 matmul): {peak / 1e9:.0f} GFLOP/s")
    headers = ["model", "params", "tokens/step", "ours tok/s", "peer tok/s", "ratio"]
    headers += ["ours MFU", "peer MFU", "compile s"]
    print(table(headers, [r.row(peak) for r in results]))
    print(
        f"ours: GPT, torch.compile {'on' if args.compile else 'off'}, fused AdamW; peer: "
        f"transformers GPT2LMHeadModel (sdpa), AdamW (foreach); float32; median of {args.steps}"
    )
    return 0


if __name__ == "__main__":
    run(main)
