"""Benchmark: training tokens/s and MFU of train.py's step against transformers, on this machine.

    python bench/train.py                              # demo and 124M-shaped models, CPU, ~1.5 min
    python bench/train.py --models demo --steps 40 --no-compile
    python bench/train.py --device cuda --dtype bfloat16 --models 124M --batch-size 64 \
        --seq-len 1024 --steps 20                      # one GPU: the gpt2 recipe's micro-batch

Ours is the step train.py runs: our GPT under torch.compile, AdamW with fused kernels (weight
decay on >= 2-D parameters), gradient clipping at 1.0 (and TF32 matmuls on CUDA). The peer is
transformers' GPT2LMHeadModel (SDPA attention, dropout 0, eager) with torch's default AdamW
(foreach) and the same clipping, holding the same weights and training on the same batch in the
same dtype (float32, the CPU training dtype, or bfloat16 autocast). Steps alternate (ours,
peer) after warm-up steps; ours compiles in its first step, timed apart. Medians are reported.
MFU = training FLOPs per token (6N + 12LCT, GPT.flops_per_token) x tokens/s / the device's peak:
on CPU the fastest float32 2048x2048 matmul measured before and after the models, on CUDA the
datasheet's dense bf16 figure (989 TFLOP/s on H100/H200; --peak-flops otherwise).
Targets (issue 5): on CPU ours >= 1.2x the peer's tokens/s; on one H200, >= 45% MFU.
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
from gpt.cli import UserError, run  # noqa: E402
from gpt.config import GPTConfig, TrainConfig, model_preset  # noqa: E402
from gpt.distributed import resolve_device  # noqa: E402
from gpt.hf import state_to_hf  # noqa: E402
from gpt.model.gpt2 import GPT  # noqa: E402
from gpt.train.mfu import measure_matmul_flops, peak_flops  # noqa: E402
from gpt.train.parallel import autocast  # noqa: E402
from gpt.train.recipe import configure_optimizer  # noqa: E402


@dataclass(frozen=True)
class Shape:
    """A benchmarked model and batch."""

    preset: str
    vocab: int
    batch: int
    seq: int
    steps: int
    """Timed steps by default: many for the fast small model, whose steps are noisier."""


# The demo recipe's micro-batch, and a 124M-shaped model (GPT-2's vocabulary, padded to 50,304
# in ours) on a small batch so that the run stays short.
MODELS = {"demo": Shape("demo", 4096, 16, 64, 20), "124M": Shape("gpt2", 50257, 2, 128, 5)}


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


@dataclass(frozen=True)
class Setting:
    """Where and how both models train."""

    device: torch.device
    dtype: torch.dtype
    compile: bool
    batch: int | None
    seq: int | None
    steps: int | None
    warmup: int


def step_fn(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    loss_fn: Callable[[], torch.Tensor],
    setting: Setting,
) -> Callable[[], float]:
    """One training step: forward with the loss, backward, clip at 1.0, AdamW, zero_grad."""

    def step() -> float:
        start = time.perf_counter()
        with autocast(setting.device, setting.dtype):
            loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if setting.device.type == "cuda":
            torch.cuda.synchronize(setting.device)
        return time.perf_counter() - start

    return step


def bench_model(name: str, setting: Setting) -> Result:
    shape = MODELS[name]
    batch, seq = setting.batch or shape.batch, setting.seq or shape.seq
    steps, device = setting.steps or shape.steps, setting.device
    block = max(seq, model_preset(shape.preset).block_size)
    config = model_preset(
        shape.preset, vocab_size=shape.vocab, pad_vocab_multiple=64, block_size=block
    )
    torch.manual_seed(0)
    ours = GPT(config).to(device).train()
    peer = peer_model(config, ours).to(device)
    tokens = torch.randint(0, shape.vocab, (batch, seq + 1), device=device)
    x, y = tokens[:, :-1], tokens[:, 1:]
    compiled = torch.compile(ours) if setting.compile else ours
    recipe = TrainConfig(max_lr=1e-4)
    ours_step = step_fn(
        ours, configure_optimizer(ours, recipe, device), lambda: compiled(x, y)[1], setting
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
    peer_step = step_fn(peer, peer_opt, lambda: peer(input_ids=x, labels=x).loss, setting)
    compile_s = ours_step()  # compiles
    for _ in range(setting.warmup):
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
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed steps of each model (default: demo 20, 124M 5)",
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    p.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=True, help="compile ours"
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--batch-size", type=int, default=None, help="rows (default: per model)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens a row (default: per model)")
    p.add_argument("--peak-flops", type=float, default=None, help="device peak for MFU")
    args = p.parse_args(argv)
    names = args.models.split(",")
    if unknown := [n for n in names if n not in MODELS]:
        raise UserError(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
    sizes = (args.steps, args.batch_size, args.seq_len)
    if any(v is not None and v < 1 for v in sizes) or args.warmup < 0:
        raise UserError("--steps, --batch-size and --seq-len must be >= 1, --warmup >= 0")
    setting = Setting(
        device=resolve_device(args.device),
        dtype=getattr(torch, args.dtype),
        compile=args.compile,
        batch=args.batch_size,
        seq=args.seq_len,
        steps=args.steps,
        warmup=args.warmup,
    )
    if setting.device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32, as train.py
    print(f"machine: {machine()}")
    recipe = TrainConfig(peak_flops=args.peak_flops)
    peak = peak_flops(recipe, setting.device, setting.dtype)
    results = [bench_model(n, setting) for n in names]
    if setting.device.type == "cpu" and args.peak_flops is None:
        peak = max(peak or 0.0, measure_matmul_flops(setting.device, n=2048, seconds=1.0))
        print(f"float32 matmul peak (fastest 2048x2048 matmul): {peak / 1e9:.0f} GFLOP/s")
    if peak is None:
        raise UserError(f"no known peak for {setting.device}: pass --peak-flops")
    print(f"peak for MFU: {peak / 1e12:.2f} TFLOP/s")
    headers = ["model", "params", "tokens/step", "ours tok/s", "peer tok/s", "ratio"]
    headers += ["ours MFU", "peer MFU", "compile s"]
    print(table(headers, [r.row(peak) for r in results]))
    print(
        f"ours: GPT, torch.compile {'on' if args.compile else 'off'}, fused AdamW; peer: "
        f"transformers GPT2LMHeadModel (sdpa), AdamW (foreach); {args.dtype} on {args.device}; "
        "median of the timed steps, alternating"
    )
    return 0


if __name__ == "__main__":
    run(main)
