"""GPT-2's recipe against the modern one at demo scale: validation loss per token and per second.

    python bench/recipes.py                 # ~20 minutes on 2 cores: 4 runs of 640-800 steps
    python bench/recipes.py --smoke         # seconds: the tiny presets on a small corpus (tests)

Trains, on the CPU demo's data (the python-docs corpus, its 4,096-token tokeniser; prepared into
cache/demo as `python train.py --preset demo` does), each preset for its own steps of 1,024
tokens (GPT-2's 800; the modern recipe's 640, see `modern-demo` in gpt/config.py):
    gpt2 @ LR    the `demo` preset (GPT-2, AdamW, cosine) at its peak rate (1e-3) and at half
                 and twice that, so that the comparison is against the best GPT-2 run, not one
                 untuned rate
    modern       the `modern-demo` preset (Qwen3 layout, Muon + AdamW, warm-up/stable/decay)
each with a validation loss every --eval-every steps (the same batches for every run). Then it
prints, and writes as one PNG (validation loss against tokens and against training seconds):
    - each run's final validation loss and training seconds (evaluations excluded);
    - the fraction of the GPT-2 tokens at which the modern run first reaches the best GPT-2
      run's final loss, and the seconds each took to reach it;
    - the cost of the optimizer step alone, Muon's Newton-Schulz iterations included, against
      AdamW's on the same model.
A run's tokens at an evaluation are the tokens trained before it (step x tokens per step).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import machine  # noqa: E402

from gpt.config import TrainConfig, model_preset, train_preset  # noqa: E402
from gpt.demo import demo_documents, ensure_data, ensure_tokeniser  # noqa: E402
from gpt.model.families import build_model  # noqa: E402
from gpt.runlog import read_records  # noqa: E402
from gpt.train.loop import train  # noqa: E402
from gpt.train.recipe import configure_optimizer  # noqa: E402


@dataclasses.dataclass
class Curve:
    """One run's validation losses and the training time before each."""

    name: str
    recipe: str
    tokens: np.ndarray
    """Tokens trained before each evaluation."""
    seconds: np.ndarray
    """Training seconds (steps only, evaluations excluded) before each evaluation."""
    val: np.ndarray

    @property
    def final(self) -> float:
        return float(self.val[-1])

    def first_reaching(self, loss: float) -> int | None:
        """Index of the first evaluation at or below `loss`, or None."""
        hits = np.flatnonzero(self.val <= loss)
        return int(hits[0]) if hits.size else None


def read_curve(run_dir: Path, name: str, recipe: str, tokens_per_step: int) -> Curve:
    """A run's curve from its metrics.jsonl (through the run logger's reader)."""
    records = read_records(run_dir / "metrics.jsonl")
    step_ms = {r["step"]: float(r["dt_ms"]) for r in records if r["kind"] == "train"}
    elapsed = np.cumsum([step_ms[s] for s in sorted(step_ms)]) / 1e3  # after steps 0, 1, ...
    vals = [(int(r["step"]), float(r["value"])) for r in records if r["kind"] == "val"]
    steps = np.array([s for s, _ in vals])
    seconds = np.array([elapsed[s - 1] if s > 0 else 0.0 for s in steps])
    val = np.array([v for _, v in vals])
    return Curve(name, recipe, steps * tokens_per_step, seconds, val)


def common_settings(eval_every: int) -> dict[str, object]:
    """What every run of the comparison shares besides its preset: frequent validation, no
    HellaSwag, samples, checkpoints, export or plots (they would only add time)."""
    return {
        "eval_every": eval_every,
        "hellaswag": "off",
        "samples": 0,
        "save_every": 0,
        "keep": 1,
        "export": False,
        "plot": False,
        "progress": False,
        "log_every": 100,
        "device": "cpu",
        "compile": False,
    }


def runs(args: argparse.Namespace) -> list[tuple[str, str, TrainConfig]]:
    """(name, recipe, settings) of each run: GPT-2 at its preset's rate and the others, then
    the modern recipe."""
    gpt2_preset, modern_preset = ("tiny", "modern-tiny") if args.smoke else ("demo", "modern-demo")
    shared = common_settings(args.eval_every)
    data = {"data": str(args.data), "tokeniser": str(args.tokeniser)}
    if args.smoke:
        data |= {"max_steps": 6, "val_tokens": 256}
    base_lr = train_preset(gpt2_preset).max_lr
    out = []
    for lr in sorted({base_lr, *args.gpt2_lrs}):
        cfg = train_preset(
            gpt2_preset, **shared, **data, max_lr=lr, out=str(args.out / f"gpt2_lr{lr:g}")
        )
        out.append((f"gpt2 @ {lr:g}", "gpt2", cfg))
    cfg = train_preset(modern_preset, **shared, **data, out=str(args.out / "modern"))
    out.append(("modern", "modern", cfg))
    return out


def prepare_data(args: argparse.Namespace) -> None:
    """The demo's tokeniser and shards (as `python train.py --preset demo` makes them), unless
    they are there; --smoke: a small corpus and a 512-token tokeniser."""
    max_docs, vocab = (40, 512) if args.smoke else (None, 4096)
    say = print
    needed = not Path(args.tokeniser).is_file() or not (args.data / "manifest.json").is_file()
    documents = demo_documents(max_docs) if needed else []
    tok = ensure_tokeniser(args.tokeniser, vocab, documents, say)
    ensure_data(args.data, tok, documents, say)


def optimizer_step_ms(preset: str, optimizer: str, repeats: int = 10) -> float:
    """Milliseconds of one optimizer step (gradients given) on a model of `preset`, median."""
    torch.manual_seed(0)
    model = build_model(model_preset(preset, vocab_size=4096, pad_vocab_multiple=64))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    cfg = TrainConfig(model=preset, optimizer=optimizer)
    opt = configure_optimizer(model, cfg, torch.device("cpu"))
    times = []
    for _ in range(repeats + 2):
        start = time.perf_counter()
        opt.step()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times[2:]))  # the first steps allocate the optimizer state


def summarise(curves: list[Curve]) -> dict[str, float | None]:
    """The comparison's figures (see the module docstring)."""
    gpt2 = [c for c in curves if c.recipe == "gpt2"]
    best = min(gpt2, key=lambda c: c.final)
    modern = next(c for c in curves if c.recipe == "modern")
    target = best.final
    hit = modern.first_reaching(target)
    best_hit = best.first_reaching(target)
    assert best_hit is not None  # its own final loss
    return {
        "target": target,
        "token_fraction": None if hit is None else modern.tokens[hit] / best.tokens[best_hit],
        "modern_seconds": None if hit is None else float(modern.seconds[hit]),
        "gpt2_seconds": float(best.seconds[best_hit]),
    }


def plot(curves: list[Curve], summary: dict[str, float | None], png: Path) -> None:
    """Validation loss against tokens (left) and training seconds (right), with the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for curve in curves:
        style = "-" if curve.recipe == "modern" else "--"
        width = 2.0 if curve.recipe == "modern" else 1.2
        for ax, x in zip(axes, (curve.tokens, curve.seconds), strict=True):
            ax.plot(x, curve.val, style, linewidth=width, label=f"{curve.name} ({curve.final:.3f})")
    target = summary["target"]
    for ax, xlabel in zip(axes, ("tokens trained", "training seconds (2 CPU cores)"), strict=True):
        ax.axhline(target, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation loss (nats/token)")
    finals = np.concatenate([c.val for c in curves])
    axes[0].set_ylim(finals.min() - 0.1, np.percentile(finals, 90) + 0.3)
    fraction = summary["token_fraction"]
    reached = "not reached" if fraction is None else f"{fraction:.2f}x the tokens"
    axes[0].set_title(f"modern reaches the best GPT-2 run's {target:.3f}: {reached}")
    axes[1].set_title("the same runs against wall time")
    axes[0].legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def report(curves: list[Curve], summary: dict[str, float | None], args: argparse.Namespace) -> None:
    print(machine())
    print(f"{'run':<16} {'final val':>9} {'train s':>8}")
    for c in curves:
        print(f"{c.name:<16} {c.final:>9.4f} {c.seconds[-1]:>8.1f}")
    fraction = summary["token_fraction"]
    target = summary["target"]
    if fraction is None:
        print(f"modern never reached the best GPT-2 run's final val loss {target:.4f}")
    else:
        print(
            f"modern reaches the best GPT-2 run's final val loss {target:.4f} after "
            f"{fraction:.3f}x its tokens, in {summary['modern_seconds']:.1f} s against "
            f"{summary['gpt2_seconds']:.1f} s (resolution: one evaluation, "
            f"{args.eval_every} steps)"
        )
    if not args.smoke:
        muon = optimizer_step_ms("modern-demo", "muon")
        adamw = optimizer_step_ms("modern-demo", "adamw")
        print(
            f"optimizer step on modern-demo: muon+adamw {muon:.1f} ms, adamw {adamw:.1f} ms "
            f"({muon / adamw:.2f}x)"
        )
    print(f"plot: {args.png}")


def demo_data_arguments(parser: argparse.ArgumentParser, out: str, png: str) -> None:
    """--out, --data, --tokeniser, --png and --smoke of a benchmark that trains on the demo's
    data (`demo_data_paths` settles them once parsed)."""
    parser.add_argument("--out", type=Path, default=Path(out), help="run directories, results")
    parser.add_argument("--data", type=Path, default=Path("cache/demo/data"))
    parser.add_argument("--tokeniser", type=Path, default=Path("cache/demo/tokeniser.tkn"))
    parser.add_argument("--png", type=Path, default=None, help=f"default OUT/{png}")
    parser.add_argument("--smoke", action="store_true", help="tiny presets, a few steps")


def demo_data_paths(args: argparse.Namespace, png: str) -> None:
    """--smoke prepares its own small corpus under OUT; the picture defaults to OUT/png."""
    if args.smoke:
        args.data, args.tokeniser = args.out / "data", args.out / "tokeniser.tkn"
    args.png = args.png or args.out / png


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    demo_data_arguments(parser, "runs/recipes", "recipes.png")
    parser.add_argument("--eval-every", type=int, default=25, help="steps between evaluations")
    parser.add_argument(
        "--gpt2-lrs",
        type=lambda s: [float(x) for x in s.split(",")],
        default=[5e-4, 2e-3],
        help="GPT-2 peak rates besides the demo preset's (comma-separated)",
    )
    args = parser.parse_args(argv)
    demo_data_paths(args, "recipes.png")
    if args.smoke:
        args.eval_every = 2
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    prepare_data(args)
    curves = []
    for name, recipe, cfg in runs(args):
        print(f"training {name} -> {cfg.out}", flush=True)
        shutil.rmtree(cfg.out, ignore_errors=True)  # a fresh run, not a resumed one
        train(cfg)
        curves.append(read_curve(Path(cfg.out), name, recipe, cfg.total_batch_size))
    summary = summarise(curves)
    plot(curves, summary, args.png)
    report(curves, summary, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
