"""Do the modern recipe's rates hold across widths? muP's sweep, on the CPU demo's data.

    python bench/transfer.py                # ~3.5 hours on 2 cores (two runs at a time)
    python bench/transfer.py --smoke        # seconds: tiny widths, a few steps (tests)

The modern recipe's rates were tuned 256 wide (`modern-demo`); the `modern` preset is 768 wide.
Each run trains the modern-demo recipe (Qwen3 layout, Muon + AdamW, warm-up/stable/decay) on the
python-docs corpus with its 4,096-token tokeniser (prepared into cache/demo as `python train.py
--preset demo` does), the same data order and tokens, with one family of rates multiplied by
2^-2 .. 2^2:
    muon    the blocks' matrices (--muon-lr)
    adamw   the AdamW groups together (--max-lr, --embed-lr, --head-lr: embedding, head, gains)
under two parametrisations:
    constant   today's numbers at every width
    rule       the recipe's width rule (gpt/train/recipe.py, `peak_rates`: the head's rate
               x 256 / width), the numbers being rates at width 256
for widths 128, 256 and 512 (4 layers, 64-wide heads). At 256 the two are the same runs. The
muon family's multipliers under `constant` are run at 128 only: both parametrisations give the
matrices the same rate, and Muon at 512 is most of the sweep's cost. Then three checks under
the rule: 768 wide (GPT-2 small's width), every rate x 1/2, 1 and 2; depth, the whole sweep at
width 256 with 8 layers against 4; and the horizon, Muon x1/2 against x1 at 512 wide trained 400
and 800 steps instead of 100 (does the short run's preference for a lower Muon rate last?).

The final validation loss of each run goes to OUT/results.json as it finishes (a rerun skips
the runs already there, so an interrupted sweep continues). At the end: a table of every run, the
best multiplier of each family per width and parametrisation, the default's distance from the
best, and OUT/transfer.png: loss against multiplier, one curve per width.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import multiprocessing
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from _common import machine, table  # noqa: E402
from recipes import (  # noqa: E402
    common_settings,
    demo_data_arguments,
    demo_data_paths,
    prepare_data,
)

from gpt.config import train_preset  # noqa: E402
from gpt.fsio import write_json_atomic  # noqa: E402
from gpt.runlog import read_records  # noqa: E402
from gpt.train.loop import train  # noqa: E402

FAMILIES = {
    "muon": ("muon_lr",),
    "adamw": ("max_lr", "embed_lr", "head_lr"),
}


@dataclasses.dataclass(frozen=True)
class Job:
    """One training run of the sweep."""

    width: int
    layers: int
    parametrisation: str
    """constant or rule (see the module docstring)."""
    family: str
    """muon, adamw, or all (every rate: the 768-wide check)."""
    multiplier: float
    steps: int | None = None
    """Training steps when not the sweep's (the horizon check)."""

    @property
    def key(self) -> str:
        longer = f"-s{self.steps}" if self.steps else ""
        return (
            f"w{self.width}-l{self.layers}-{self.parametrisation}-{self.family}-"
            f"x{self.multiplier:g}{longer}"
        )


@dataclasses.dataclass(frozen=True)
class Sweep:
    """What the sweep trains: its preset, widths, depth and run length."""

    preset: str
    widths: tuple[int, ...]
    base_width: int
    layers: int
    deep_layers: int
    check_width: int
    steps: int
    warmup_steps: int
    horizon_steps: tuple[int, ...]
    """Of the horizon check: Muon x1/2 against x1 at the widest width, trained longer."""
    head_size: int
    multipliers: tuple[float, ...]
    """Of each family's rates; 1 (the recipe's) among them."""


FULL = Sweep(
    "modern-demo", (128, 256, 512), 256, 4, 8, 768, 100, 10, (400, 800), 64, (0.25, 0.5, 1, 2, 4)
)
SMOKE = Sweep("modern-tiny", (16, 32), 32, 2, 3, 48, 3, 1, (6,), 8, (0.5, 1, 2))


def family_jobs(sweep: Sweep, width: int, layers: int, parametrisation: str) -> list[Job]:
    """Each family's multipliers at one width and depth; the default (x1) once."""
    jobs = [Job(width, layers, parametrisation, "all", 1.0)]
    families = FAMILIES if parametrisation == "rule" or width == min(sweep.widths) else ["adamw"]
    for family in families:
        jobs += [
            Job(width, layers, parametrisation, family, m) for m in sweep.multipliers if m != 1
        ]
    return jobs


def jobs_of(sweep: Sweep) -> list[Job]:
    """Every run, in the order they matter (the width sweep first, then the checks); at the
    base width the two parametrisations are the same runs and are trained once, as `rule`."""
    jobs = []
    for width in sweep.widths:
        for parametrisation in ("rule", "constant"):
            if parametrisation == "constant" and width == sweep.base_width:
                continue
            jobs += family_jobs(sweep, width, sweep.layers, parametrisation)
    jobs += check_jobs(sweep)
    jobs += family_jobs(sweep, sweep.base_width, sweep.deep_layers, "rule")
    return jobs + [job for steps in sweep.horizon_steps for job in horizon_jobs(sweep, steps)]


def check_jobs(sweep: Sweep) -> list[Job]:
    """The check width's runs: every rate of the rule x 1/2, 1, 2."""
    return [Job(sweep.check_width, sweep.layers, "rule", "all", m) for m in (0.5, 1.0, 2.0)]


def horizon_jobs(sweep: Sweep, steps: int) -> list[Job]:
    """Muon's default against half of it at the widest width, `steps` long: does the short
    sweep's preference for a lower Muon rate last on a longer run?"""
    widest = max(sweep.widths)
    return [
        Job(widest, sweep.layers, "rule", "muon", 0.5, steps),
        Job(widest, sweep.layers, "rule", "all", 1.0, steps),
    ]


def settings(job: Job, sweep: Sweep, args: argparse.Namespace) -> dict[str, object]:
    """The run's TrainConfig overrides: the preset's recipe with the job's shape and rates."""
    recipe = train_preset(sweep.preset)
    rates = {name: getattr(recipe, name) for names in FAMILIES.values() for name in names}
    scaled = FAMILIES.get(job.family, tuple(rates))
    rates = {
        name: rate * job.multiplier if name in scaled else rate for name, rate in rates.items()
    }
    smoke = {"val_tokens": 256} if args.smoke else {}
    steps = job.steps or sweep.steps
    return {
        **common_settings(eval_every=steps),
        **rates,
        **smoke,
        "data": str(args.data),
        "tokeniser": str(args.tokeniser),
        "out": str(args.out / "runs" / job.key),
        "n_embd": job.width,
        "n_head": job.width // sweep.head_size,
        "n_layer": job.layers,
        "max_steps": steps,
        "warmup_steps": sweep.warmup_steps * steps // sweep.steps,
        "base_width": sweep.base_width if job.parametrisation == "rule" else None,
    }


def run(job: Job, sweep: Sweep, args: argparse.Namespace) -> dict[str, object]:
    """Train one run (quietly: its console output goes to its log.txt) and return its final
    validation loss and seconds; the run directory is removed afterwards."""
    cfg = train_preset(sweep.preset, **settings(job, sweep, args))
    out = Path(cfg.out)
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, not a resumed one
    start = time.perf_counter()
    with open(args.out / "runs.log", "a") as log, contextlib.redirect_stdout(log):
        train(cfg)
    seconds = time.perf_counter() - start
    vals = [r for r in read_records(out / "metrics.jsonl") if r["kind"] == "val"]
    shutil.rmtree(out)
    return {**dataclasses.asdict(job), "val": vals[-1]["value"], "seconds": round(seconds, 1)}


def single_threaded() -> None:
    """A worker of the pool: one thread each, two workers on two cores (17% more runs an hour
    than one run on both cores, measured at widths 128 to 512)."""
    torch.set_num_threads(1)


def _pool_run(payload: tuple[Job, Sweep, argparse.Namespace]) -> dict[str, object]:
    return run(*payload)


def results_path(args: argparse.Namespace) -> Path:
    return args.out / "results.json"


def load_results(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    path = results_path(args)
    return json.loads(path.read_text()) if path.is_file() else {}


def finished(
    jobs: list[Job], sweep: Sweep, args: argparse.Namespace
) -> Iterator[dict[str, object]]:
    """Each job's result as it finishes, `args.workers` at a time."""
    payloads = [(job, sweep, args) for job in jobs]
    if args.workers == 1:
        yield from (_pool_run(p) for p in payloads)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.workers, initializer=single_threaded, maxtasksperchild=1) as pool:
        yield from pool.imap_unordered(_pool_run, payloads)


def sweep_all(sweep: Sweep, args: argparse.Namespace) -> dict[str, dict[str, object]]:
    """Train every job not in OUT/results.json, saving the results after each."""
    results = load_results(args)
    todo = [job for job in jobs_of(sweep) if job.key not in results]
    print(f"{len(todo)} runs to train ({len(results)} already in {results_path(args)})")
    for result in finished(todo, sweep, args):
        key = Job(**{f.name: result[f.name] for f in dataclasses.fields(Job)}).key  # type: ignore[arg-type]
        results[key] = result
        write_json_atomic(results_path(args), results)
        print(f"{key}: val {result['val']:.4f} ({result['seconds']:.0f} s)", flush=True)
    return results


def curve(
    results: dict[str, dict[str, object]],
    sweep: Sweep,
    width: int,
    layers: int,
    param: str,
    family: str,
) -> dict[float, float]:
    """Final validation loss by multiplier of one family at one width, depth and
    parametrisation (the x1 run is shared by the families; at the base width `constant` reads
    the `rule` runs, which are the same)."""
    if width == sweep.base_width:
        param = "rule"
    losses = {}
    for m in sweep.multipliers:
        job = Job(width, layers, param, "all" if m == 1.0 else family, m)
        if job.key in results:
            losses[m] = final_loss(results, job)
    return losses


def best(losses: dict[float, float]) -> float:
    return min(losses, key=losses.__getitem__)


def summary_rows(results: dict[str, dict[str, object]], sweep: Sweep) -> list[list[object]]:
    """One row per (parametrisation, family, width or depth): the losses by multiplier, the
    best multiplier and the default's distance from the best."""
    rows = []
    shapes = [(w, sweep.layers) for w in sweep.widths] + [(sweep.base_width, sweep.deep_layers)]
    for param in ("constant", "rule"):
        for family in FAMILIES:
            for width, layers in shapes:
                if layers != sweep.layers and param == "constant":
                    continue
                losses = curve(results, sweep, width, layers, param, family)
                if len(losses) < 2 or 1.0 not in losses:
                    continue
                cells = [f"{losses[m]:.4f}" if m in losses else "" for m in sweep.multipliers]
                gap = losses[1.0] - min(losses.values())
                shape = f"{width} x {layers}"
                rows.append([param, family, shape, *cells, f"x{best(losses):g}", f"{gap:.4f}"])
    return rows


def final_loss(results: dict[str, dict[str, object]], job: Job) -> float:
    return float(results[job.key]["val"])  # type: ignore[arg-type]


def check_losses(results: dict[str, dict[str, object]], sweep: Sweep) -> dict[float, float]:
    """The check width's final loss by multiplier, of the runs trained."""
    jobs = [job for job in check_jobs(sweep) if job.key in results]
    return {job.multiplier: final_loss(results, job) for job in jobs}


def horizon_losses(
    results: dict[str, dict[str, object]], sweep: Sweep
) -> dict[int, tuple[float, float]]:
    """The horizon check: by run length, Muon x1/2's and x1's final loss at the widest width
    (the lengths whose two runs are trained)."""
    losses = {}
    for steps in sweep.horizon_steps:
        jobs = horizon_jobs(sweep, steps)
        if all(job.key in results for job in jobs):
            half, default = (final_loss(results, job) for job in jobs)
            losses[steps] = (half, default)
    return losses


def plot(results: dict[str, dict[str, object]], sweep: Sweep, png: Path) -> None:
    """Loss against multiplier, one curve per width: a row per parametrisation (and one for
    depth), a column per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 2, figsize=(11, 11), sharex=True, sharey="col")
    colours = dict(zip(sweep.widths, ("tab:blue", "tab:orange", "tab:green"), strict=False))
    panels = [("constant", sweep.layers), ("rule", sweep.layers), ("rule", sweep.deep_layers)]
    for row, (param, layers) in enumerate(panels):
        for col, family in enumerate(FAMILIES):
            ax = axes[row][col]
            shapes = (
                [(w, sweep.layers) for w in sweep.widths]
                if row < 2
                else [(sweep.base_width, sweep.layers), (sweep.base_width, layers)]
            )
            for width, depth in shapes:
                losses = curve(results, sweep, width, depth, param, family)
                if len(losses) < 2:
                    continue
                style = "--" if depth != sweep.layers else "-"
                ax.plot(
                    list(losses),
                    list(losses.values()),
                    style,
                    marker="o",
                    color=colours.get(width, "tab:red"),
                    label=f"width {width}, {depth} layers",
                )
            if param == "rule" and row == 1:
                check = check_losses(results, sweep)
                if check:
                    ax.plot(
                        list(check),
                        list(check.values()),
                        ":",
                        marker="s",
                        color="tab:red",
                        label=f"width {sweep.check_width} (every rate x m)",
                    )
            what = "depth, under the rule" if row == 2 else f"{param} rates"
            ax.set_title(f"{family} family, {what}")
            ax.set_xscale("log", base=2)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("rate multiplier")
    for row in axes:
        row[0].set_ylabel(f"val loss after {sweep.steps} steps")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)


def report(results: dict[str, dict[str, object]], sweep: Sweep, args: argparse.Namespace) -> None:
    print(machine())
    print(
        f"{sweep.preset} recipe, {sweep.steps} steps of 1,024 tokens, {sweep.layers} layers, "
        f"{sweep.head_size}-wide heads, rule stated at width {sweep.base_width}"
    )
    headers = ["rates", "family", "width x layers", *(f"x{m:g}" for m in sweep.multipliers)]
    print(table([*headers, "best", "x1 - best"], summary_rows(results, sweep)))
    print(f"width {sweep.check_width} under the rule, every rate x m:")
    check = check_losses(results, sweep).items()
    print(table(["m", "val"], [[f"x{m:g}", f"{loss:.4f}"] for m, loss in check]))
    print(f"horizon: width {max(sweep.widths)}, Muon x m, trained longer:")
    horizon = horizon_losses(results, sweep).items()
    print(table(["steps", "x0.5", "x1"], [[n, f"{h:.4f}", f"{d:.4f}"] for n, (h, d) in horizon]))
    for line in verdicts(results, sweep):
        print(line)
    print(f"plot: {args.png}")


def verdicts(results: dict[str, dict[str, object]], sweep: Sweep) -> list[str]:
    """The targets, one line each: per parametrisation and family, the best multiplier at each
    width (held when they span at most one grid step, a factor of 2) and the default's distance
    from the best at the widest; the same across depths; the check width's default."""
    widest, lines = max(sweep.widths), []
    for param in ("constant", "rule"):
        for family in FAMILIES:
            curves = {
                w: curve(results, sweep, w, sweep.layers, param, family) for w in sweep.widths
            }
            bests = {w: best(c) for w, c in curves.items() if len(c) == len(sweep.multipliers)}
            if not bests:
                continue
            spread = max(bests.values()) / min(bests.values())
            at = ", ".join(f"{w}: x{m:g}" for w, m in bests.items())
            gap = ""
            if widest in bests:
                losses = curves[widest]
                gap = f"; x1 at {widest} is {losses[1.0] - min(losses.values()):.3f} from the best"
            lines.append(
                f"{param} {family}: best {at} ({'within' if spread <= 2 else 'beyond'} one grid "
                f"step){gap}"
            )
    for family in FAMILIES:
        depths = (sweep.layers, sweep.deep_layers)
        curves = [curve(results, sweep, sweep.base_width, d, "rule", family) for d in depths]
        if all(len(c) == len(sweep.multipliers) for c in curves):
            shallow, deep = (best(c) for c in curves)
            spread = max(shallow, deep) / min(shallow, deep)
            lines.append(
                f"depth, {family}: best x{shallow:g} at {depths[0]} layers, x{deep:g} at "
                f"{depths[1]} ({'within' if spread <= 2 else 'beyond'} one grid step)"
            )
    check = check_losses(results, sweep)
    if len(check) == 3:
        lines.append(
            f"width {sweep.check_width}: x1 is {check[1.0] - min(check.values()):.3f} from "
            "the best of x1/2, x1, x2"
        )
    for steps, (half, default) in horizon_losses(results, sweep).items():
        gap = default - min(half, default)
        lines.append(
            f"horizon, width {max(sweep.widths)}, {steps} steps: Muon x1 is {gap:.3f} from the "
            "better of x1/2, x1"
        )
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    demo_data_arguments(parser, "runs/transfer", "transfer.png")
    parser.add_argument("--workers", type=int, default=2, help="runs at a time, one thread each")
    args = parser.parse_args(argv)
    demo_data_paths(args, "transfer.png")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sweep = SMOKE if args.smoke else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    prepare_data(args)
    results = sweep_all(sweep, args)
    plot(results, sweep, args.png)
    report(results, sweep, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
