"""Curves of training runs against reference runs and the OpenAI baselines, as PNG files.

    python -m gpt.plot runs/124M                       # -> runs/124M/plots/{loss,hellaswag}.png
    python -m gpt.plot runs/a runs/b --out plots \\
        --reference ../shared/data/reference/gpt-alpha/train_log_10B.txt

A run is a run directory (its metrics.jsonl, else its log.txt) or a log file, read through
gpt/runlog.py, which owns both formats:
    metrics.jsonl   one JSON object per event: {"step", "tokens", "kind", "value", ...}
    log.txt         the seed's text log, one event per line: `STEP (TOKENS) KIND VALUE`,
                    e.g. `100 (52953088) val 6.6388`
Kinds: train (loss at every step), val (validation loss), hella or hellaswag (HellaSwag acc_norm),
ckpt (a checkpoint was saved; value = its val loss), others are ignored, and so are values that
are not finite numbers (the NaN that stopped a run). After a resume, events of a step that was
already logged replace the earlier ones.

loss.png: training loss (faint: raw; solid: moving average) and validation loss (dots) against
tokens. hellaswag.png: HellaSwag acc_norm against tokens, with chance (0.25). The original
GPT-alpha 124M run passes GPT-2 124M after about 5B tokens.

Reference lines are drawn only where they compare, from what the run's folder records
(RUN/config.json, written by training: the tokeniser and the data source; RUN/demo.json, written
by the demo: the unigram entropy of its val split):
    GPT-2's tokeniser                      GPT-2 124M (0.2955) and GPT-3 125M (0.337) on HellaSwag
    ... and fineweb-edu (or data unknown)  GPT-2 124M's val loss on fineweb-edu (3.2924)
    a demo.json                            the run's unigram entropy, in the run's colour
A log with no config.json beside it has an unknown tokeniser, except --reference logs: those are
the original GPT-alpha runs' logs, GPT-2-tokenised on fineweb-edu.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gpt.cli import UserError, run
from gpt.data.sources import FINEWEB_EDU
from gpt.fsio import read_json_object
from gpt.runlog import Event, read_events, run_log

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

GPT2_124M_VAL_LOSS = 3.2924  # OpenAI GPT-2 124M on the fineweb-edu validation split
GPT2_124M_HELLASWAG = 0.2955
GPT3_125M_HELLASWAG = 0.337
CHANCE_HELLASWAG = 0.25
KIND_ALIASES = {"hellaswag": "hella"}
PLOTTED_KINDS = ("train", "val", "hella", "ckpt")
RUN_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b")
REFERENCE_COLOURS = ("#7f7f7f", "#a6761d", "#e377c2", "#393b79")
RUN_CONFIG = "config.json"  # the resolved run configuration, written by gpt/train/loop.py
DEMO_SUMMARY = "demo.json"  # the demo's baseline and result, written by gpt/demo.py


@dataclass
class Run:
    """The events of one run: per kind, tokens and values in step order."""

    name: str
    source: Path
    series: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    tokeniser: str | None = None
    """The tokeniser it was trained with: "gpt2" or a .tkn path; None: unknown."""
    data: str | None = None
    """The source of its data as the manifest records it; None: unknown."""
    unigram_entropy: float | None = None
    """Its own val-loss baseline, the unigram entropy of its val split (nats/token), if known."""

    @property
    def gpt2_tokens(self) -> bool:
        """Trained with GPT-2's tokeniser: GPT-2's and GPT-3's HellaSwag lines compare."""
        return self.tokeniser == "gpt2"

    @property
    def gpt2_val(self) -> bool:
        """GPT-2 124M's val loss on fineweb-edu compares: same tokeniser, same data (or unknown)."""
        return self.gpt2_tokens and (self.data is None or self.data.startswith(FINEWEB_EDU))

    def get(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        empty = np.zeros(0)
        return self.series.get(kind, (empty, empty))


# ----------------------------------------------------------------------------- reading


def _as_float(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def build_series(events: Iterable[Event]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Group events by kind; an event at a step already logged for its kind (a resumed run)
    replaces that step and everything after it. Values that are not finite numbers (samples'
    text, a NaN loss) are skipped."""
    by_kind: dict[str, list[tuple[int, int, float]]] = {}
    for step, tokens, kind, value in events:
        kind = KIND_ALIASES.get(kind, kind)
        x = _as_float(value)
        if kind not in PLOTTED_KINDS or x is None:
            continue
        rows = by_kind.setdefault(kind, [])
        while rows and rows[-1][0] >= step:
            rows.pop()
        rows.append((step, tokens, x))
    return {
        k: (np.array([r[1] for r in rows], np.float64), np.array([r[2] for r in rows]))
        for k, rows in by_kind.items()
    }


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object file; {} when it is absent."""
    return read_json_object(path) if path.is_file() else {}


def load_run(path: Path, name: str | None = None, tokeniser: str | None = None) -> Run:
    """A run directory (metrics.jsonl, else log.txt), a .jsonl file or a text log, read through
    gpt/runlog.py, with what its folder's config.json and demo.json record. `tokeniser`:
    the one to assume when there is no config.json."""
    path = Path(path)
    log = run_log(path)
    series = build_series(read_events(log))
    if not series:
        raise UserError(f"{log}: no train, val or HellaSwag events")
    folder = path if path.is_dir() else path.parent
    config = _read_json(folder / RUN_CONFIG)
    if config:
        recorded = config.get("tokeniser")
        tokeniser = (
            recorded.get("spec")
            if isinstance(recorded, dict)
            else config.get("train", {}).get("tokeniser")
        )
    entropy = _as_float(_read_json(folder / DEMO_SUMMARY).get("unigram_entropy"))
    return Run(
        name or (path.name if path.is_dir() else path.stem),
        path,
        series,
        tokeniser=tokeniser,
        data=config.get("data", {}).get("source"),
        unigram_entropy=entropy,
    )


# ----------------------------------------------------------------------------- summaries


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred mean over `window` points (fewer at the ends), so the curve does not lag.

    >>> moving_average(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), 3).tolist()
    [1.5, 2.0, 3.0, 4.0, 4.5]
    """
    c = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
    idx = np.arange(len(values))
    lo = np.maximum(idx - window // 2, 0)
    hi = np.minimum(idx + (window - 1) // 2 + 1, len(values))
    return (c[hi] - c[lo]) / (hi - lo)


def default_window(n: int) -> int:
    """Smoothing window for n training-loss points: about 2% of the run, 1 to 500 points."""
    return int(min(500, max(1, n // 50)))


def summary(run_: Run) -> dict[str, float | int | None]:
    """Best val loss and best HellaSwag (with the tokens where they happened), final tokens."""
    out: dict[str, float | int | None] = {"tokens": None}
    ends = [t[-1] for t, _ in run_.series.values() if len(t)]
    out["tokens"] = int(max(ends)) if ends else None
    for kind, key, best in (
        ("val", "min_val_loss", np.argmin),
        ("hella", "max_hellaswag", np.argmax),
    ):
        tokens, values = run_.get(kind)
        i = int(best(values)) if len(values) else None
        out[key] = None if i is None else float(values[i])
        out[f"{key}_tokens"] = None if i is None else int(tokens[i])
    return out


def describe(run_: Run) -> str:
    """One line: tokens trained, best val loss and best HellaSwag with where they happened."""
    s = summary(run_)
    parts = [f"{run_.name}: {format_tokens(s['tokens'] or 0)} tokens"]
    if s["min_val_loss"] is not None:
        parts.append(
            f"best val loss {s['min_val_loss']:.4f} at {format_tokens(s['min_val_loss_tokens'])}"
        )
    if s["max_hellaswag"] is not None:
        parts.append(
            f"best HellaSwag {s['max_hellaswag']:.4f} at {format_tokens(s['max_hellaswag_tokens'])}"
        )
    return ", ".join(parts)


def format_tokens(x: float, _pos: int | None = None) -> str:
    """Axis tick label: 0, 500K, 250M, 2.5B.

    >>> [format_tokens(v) for v in (0, 5e5, 2.5e8, 2.5e9, 1e10)]
    ['0', '500K', '250M', '2.5B', '10B']
    """
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.0f}"


# ----------------------------------------------------------------------------- figures


def _new_axes(title: str, ylabel: str) -> tuple[Figure, Axes]:
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(11, 5.5), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=13)
    ax.set_xlabel("tokens trained")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_formatter(FuncFormatter(format_tokens))
    ax.grid(True, alpha=0.3)
    return fig, ax


def _styles(runs: Sequence[Run], references: Sequence[Run]) -> list[tuple[Run, str, str]]:
    """(run, colour, label) for references (muted colours, labelled) then runs."""
    out = [(r, REFERENCE_COLOURS[i % 4], f"{r.name} (reference)") for i, r in enumerate(references)]
    return out + [(r, RUN_COLOURS[i % len(RUN_COLOURS)], r.name) for i, r in enumerate(runs)]


def _x_extent(runs: Sequence[Run], references: Sequence[Run]) -> float:
    """The tokens the x axis spans: the longest run's (references are cut to it), else the
    longest reference's."""
    ends = [float(t[-1]) for r in (runs or references) for t, _ in r.series.values() if len(t)]
    return max(ends, default=1.0)


def _clip(tokens: np.ndarray, values: np.ndarray, xmax: float) -> tuple[np.ndarray, np.ndarray]:
    keep = tokens <= xmax
    return tokens[keep], values[keep]


def _marker(n: int) -> str:
    """Dots on sparse curves only: hundreds of them would hide the line."""
    return "o" if n <= 60 else ""


def _loss_ylim(
    curves: Sequence[tuple[np.ndarray, np.ndarray]], xmax: float, lines: Sequence[float]
) -> tuple[float, float]:
    """Leave out the first steps' loss (~11): the top is the highest loss after the first 5% of
    the axis, the bottom the lowest loss; the horizontal reference `lines` always show."""
    tops, bottoms = list(lines), list(lines)
    for tokens, values in curves:
        later = values[tokens >= 0.05 * xmax]
        if len(later):
            tops.append(float(later.max()))
        if len(values):
            bottoms.append(float(values.min()))
    lo, hi = min(bottoms), max(tops)
    pad = 0.05 * (hi - lo) + 0.02
    return lo - pad, hi + pad


def _loss_lines(runs: Sequence[Run], references: Sequence[Run]) -> list[tuple[float, str, str]]:
    """(loss, colour, label) of the horizontal lines: GPT-2 124M's val loss when some run's
    compares with it, and each run's own unigram entropy where it is known."""
    lines = []
    if any(r.gpt2_val for r in [*runs, *references]):
        lines.append((GPT2_124M_VAL_LOSS, "black", f"OpenAI GPT-2 124M val ({GPT2_124M_VAL_LOSS})"))
    for r, colour, label in _styles(runs, references):
        if r.unigram_entropy is not None:
            text = f"{label}: unigram entropy of the val split ({r.unigram_entropy:.2f})"
            lines.append((r.unigram_entropy, colour, text))
    return lines


def loss_figure(
    runs: Sequence[Run], references: Sequence[Run] = (), window: int | None = None
) -> Figure:
    """Training loss (raw, faint; moving average, solid), val loss (dashed), the last checkpoint
    (triangle) and the baselines that compare (`_loss_lines`)."""
    fig, ax = _new_axes("Loss against tokens trained", "cross-entropy loss (nats/token)")
    xmax = _x_extent(runs, references)
    limits: list[tuple[np.ndarray, np.ndarray]] = []
    for r, colour, label in _styles(runs, references):
        tokens, values = _clip(*r.get("train"), xmax)
        if len(values):
            smooth = moving_average(values, window or default_window(len(values)))
            ax.plot(tokens, values, color=colour, alpha=0.18, linewidth=0.6)
            ax.plot(tokens, smooth, color=colour, linewidth=1.8, label=f"{label}: train (smoothed)")
            limits.append((tokens, smooth))
        tokens, values = _clip(*r.get("val"), xmax)
        if len(values):
            ax.plot(
                tokens,
                values,
                color=colour,
                linestyle="--",
                marker=_marker(len(values)),
                markersize=3.5,
                linewidth=1.2,
                label=f"{label}: val",
            )
            limits.append((tokens, values))
        tokens, values = _clip(*r.get("ckpt"), xmax)
        if len(values):
            ax.plot(
                tokens[-1:],
                values[-1:],
                color=colour,
                marker="v",
                markersize=9,
                linestyle="none",
                label=f"{label}: last checkpoint",
            )
    lines = _loss_lines(runs, references)
    for y, colour, label in lines:
        ax.axhline(y, color=colour, linestyle=":", linewidth=1.2, label=label)
    ax.set_xlim(0, 1.02 * xmax)
    ax.set_ylim(*_loss_ylim(limits, xmax, [y for y, _, _ in lines]))
    ax.legend(loc="upper right", fontsize=9)
    return fig


def hellaswag_figure(runs: Sequence[Run], references: Sequence[Run] = ()) -> Figure:
    """HellaSwag acc_norm per run, with chance, and GPT-2 124M's and GPT-3 125M's lines when
    some run has GPT-2's tokeniser."""
    fig, ax = _new_axes("HellaSwag accuracy against tokens trained", "HellaSwag acc_norm")
    xmax = _x_extent(runs, references)
    for r, colour, label in _styles(runs, references):
        tokens, values = _clip(*r.get("hella"), xmax)
        if len(values):
            ax.plot(
                tokens,
                values,
                color=colour,
                marker=_marker(len(values)),
                markersize=3.5,
                linewidth=1.3,
                label=label,
            )
    lines = [(CHANCE_HELLASWAG, ":", f"chance ({CHANCE_HELLASWAG})")]
    if any(r.gpt2_tokens for r in [*runs, *references]):
        lines[:0] = [
            (GPT3_125M_HELLASWAG, "-.", f"OpenAI GPT-3 125M ({GPT3_125M_HELLASWAG})"),
            (GPT2_124M_HELLASWAG, "--", f"OpenAI GPT-2 124M ({GPT2_124M_HELLASWAG})"),
        ]
    for y, style, label in lines:
        ax.axhline(y, color="black", linestyle=style, linewidth=1.1, label=label)
    ax.set_xlim(0, 1.02 * xmax)
    ax.legend(loc="upper left", fontsize=9)
    return fig


def _unique_names(runs: list[Run], paths: Sequence[Path]) -> None:
    """Label runs by folder name, or by the path as given when two names clash."""
    names = [r.name for r in runs]
    for r, p in zip(runs, paths, strict=True):
        if names.count(r.name) > 1:
            r.name = str(p)


def plot_runs(
    run_dirs: Sequence[Path], out_dir: Path, reference: Sequence[Path] = ()
) -> list[Path]:
    """Write loss.png (always) and hellaswag.png (when some run has HellaSwag results) into
    `out_dir`; returns the paths written."""
    if not run_dirs and not reference:
        raise ValueError("nothing to plot: give at least one run directory or reference log")
    runs = [load_run(Path(p)) for p in run_dirs]
    references = [load_run(Path(p), tokeniser="gpt2") for p in reference]
    _unique_names(runs, run_dirs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {"loss.png": loss_figure(runs, references)}
    if any(len(r.get("hella")[0]) for r in [*runs, *references]):
        figures["hellaswag.png"] = hellaswag_figure(runs, references)
    written = []
    for name, fig in figures.items():
        path = out_dir / name
        tmp = out_dir / f".{name}.tmp.png"
        fig.savefig(tmp)
        tmp.replace(path)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m gpt.plot",
        description="Plot loss and HellaSwag curves of runs against references and baselines.",
    )
    p.add_argument("runs", nargs="*", type=Path, help="run directories or log files")
    p.add_argument("--out", type=Path, help="output folder (default: RUN/plots for a single run)")
    p.add_argument(
        "--reference",
        nargs="+",
        action="extend",
        type=Path,
        default=[],
        help="reference logs (seed's text format or metrics.jsonl), drawn in muted colours; "
        "without a config.json beside them, taken as GPT-2-tokenised fineweb-edu runs",
    )
    args = p.parse_args(argv)
    if not args.runs and not args.reference:
        raise UserError("give at least one run directory (or --reference LOG)")
    out = args.out
    if out is None:
        if len(args.runs) != 1 or not args.runs[0].is_dir():
            raise UserError("--out is needed unless a single run directory is given")
        out = args.runs[0] / "plots"
    for path in plot_runs(args.runs, out, args.reference):
        print(path)
    for r in [load_run(x) for x in [*args.runs, *args.reference]]:
        print(describe(r))
    return 0


if __name__ == "__main__":
    run(main)
