"""The results table of eval/run_eval.sh: one row per benchmark plus the average, one column per
model, scores x100 with two decimals.

    python eval/eval_results.py RUN/export gpt2 EleutherAI/pythia-160m
    python eval/eval_results.py --results-dir /tmp/results          # every model found there

Each model's results are every `results_*.json` lm_eval wrote under RESULTS_DIR/<model name>/
(name: the argument without "./" or a trailing "/", "/" -> "__"; a later file wins for a task).
The metric of each benchmark is the seed's: acc_norm where lm-eval normalises by length (PIQA,
OpenBookQA, ARC-Challenge, HellaSwag), acc for the other multiple-choice tasks, exact match for
the generative ones (TriviaQA after whitespace removal, GSM8K with flexible number extraction).
MMLU is its group score (lm-eval's mean over all questions), counted once and never averaged with
its subtasks. Other tasks found in the results (e.g. hellaswag_local) get a row too, with acc_norm,
else acc, else exact_match. A missing result is shown as "–" and left out of that model's average.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gpt.cli import UserError, run  # noqa: E402

MISSING = "–"


@dataclass(frozen=True)
class Benchmark:
    """A row of the table: lm-eval task name, shots, metric key in its results JSON."""

    label: str
    task: str
    shots: int
    metric: str


BENCHMARKS = (
    Benchmark("PIQA", "piqa", 0, "acc_norm,none"),
    Benchmark("SIQA", "social_iqa", 0, "acc,none"),
    Benchmark("OpenBookQA", "openbookqa", 0, "acc_norm,none"),
    Benchmark("TriviaQA", "triviaqa", 0, "exact_match,remove_whitespace"),
    Benchmark("TruthfulQA MC1", "truthfulqa_mc1", 0, "acc,none"),
    Benchmark("TruthfulQA MC2", "truthfulqa_mc2", 0, "acc,none"),
    Benchmark("MMLU", "mmlu", 5, "acc,none"),
    Benchmark("WinoGrande", "winogrande", 5, "acc,none"),
    Benchmark("GSM8K", "gsm8k", 5, "exact_match,flexible-extract"),
    Benchmark("ARC-Challenge", "arc_challenge", 25, "acc_norm,none"),
    Benchmark("HellaSwag", "hellaswag", 10, "acc_norm,none"),
)
EXTRA_METRICS = ("acc_norm,none", "acc,none", "exact_match,none", "exact_match,flexible-extract")


def model_dir_name(model: str) -> str:
    """The results folder of a model argument (same rule as run_eval.sh).

    >>> model_dir_name("./runs/124M/export/")
    'runs__124M__export'
    """
    name = model.rstrip("/")
    name = name.removeprefix("./")
    return name.replace("/", "__")


@dataclass
class ModelResults:
    """Metrics by task name, and the names of tasks that are subtasks of a group."""

    metrics: dict[str, dict[str, float]]
    subtasks: set[str]


def load_results(model_dir: Path) -> ModelResults:
    """Merge every lm_eval results_*.json under `model_dir`, oldest first (names carry the time)."""
    metrics: dict[str, dict[str, float]] = {}
    subtasks: set[str] = set()
    for path in sorted(model_dir.rglob("results_*.json"), key=lambda p: p.name):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            found = {**data.get("groups", {}), **data["results"]}
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            raise UserError(f"{path}: not an lm_eval results file") from None
        for task, values in found.items():
            metrics[task] = {k: v for k, v in values.items() if isinstance(v, (int, float))}
        for children in data.get("group_subtasks", {}).values():
            subtasks.update(children)
    return ModelResults(metrics, subtasks)


def rows_for(results: Sequence[ModelResults]) -> list[Benchmark]:
    """The standard suite, then any other top-level task some model has a result for."""
    known = {b.task for b in BENCHMARKS}
    extra: dict[str, Benchmark] = {}
    for r in results:
        for task, values in r.metrics.items():
            if task in known or task in r.subtasks or task in extra:
                continue
            metric = next((m for m in EXTRA_METRICS if m in values), None)
            if metric is not None:
                extra[task] = Benchmark(task, task, -1, metric)
    return [*BENCHMARKS, *sorted(extra.values(), key=lambda b: b.task)]


def score(r: ModelResults, bench: Benchmark) -> float | None:
    """The benchmark's score x100, or None when the model has no such result."""
    value = r.metrics.get(bench.task, {}).get(bench.metric)
    return None if value is None else 100.0 * value


def row_label(bench: Benchmark) -> str:
    metric = bench.metric.split(",")[0]
    return (
        f"{bench.label} ({metric})"
        if bench.shots < 0
        else f"{bench.label} ({bench.shots}-shot, {metric})"
    )


def table(models: Sequence[str], results: Sequence[ModelResults]) -> str:
    """Markdown table: benchmarks down, models across, the average last, then a note on gaps."""
    benches = rows_for(results)
    cells = [[row_label(b)] for b in benches]
    missing: dict[str, list[str]] = {}
    averages = ["Average"]
    for model, r in zip(models, results, strict=True):
        scores = [score(r, b) for b in benches]
        for row, b, s in zip(cells, benches, scores, strict=True):
            row.append(MISSING if s is None else f"{s:.2f}")
            if s is None:
                missing.setdefault(model, []).append(b.label)
        present = [s for s in scores if s is not None]
        averages.append(f"{sum(present) / len(present):.2f}" if present else MISSING)
    lines = _markdown(["Benchmark", *models], [*cells, averages])
    if missing:
        lines.append("")
        lines.append(f"{MISSING}: no result, left out of that model's average:")
        lines += [f"- {m}: {', '.join(labels)}" for m, labels in missing.items()]
    return "\n".join(lines)


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    """Aligned GitHub table: the first column left-aligned, the scores right-aligned."""
    widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [cells[0].ljust(widths[0])]
        padded += [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * (widths[0] + 2), *("-" * (w + 1) + ":" for w in widths[1:])]
    return [line(header), "|" + "|".join(rule) + "|", *(line(r) for r in rows)]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Table of lm-eval results written by eval/run_eval.sh.",
    )
    p.add_argument(
        "models", nargs="*", help="model arguments as given to run_eval.sh (default: all)"
    )
    p.add_argument(
        "--results-dir",
        default=str(ROOT / "eval" / "results"),
        help="run_eval.sh's OUTPUT_DIR (default: eval/results)",
    )
    args = p.parse_args(argv)
    results_dir = Path(args.results_dir)
    if not results_dir.is_dir():
        raise UserError(f"no results folder {results_dir} (run eval/run_eval.sh first)")
    models = args.models or sorted(d.name for d in results_dir.iterdir() if d.is_dir())
    if not models:
        raise UserError(f"no model results under {results_dir}")
    results = []
    for model in models:
        r = load_results(results_dir / model_dir_name(model))
        if not r.metrics:
            raise UserError(
                f"no results for {model} under {results_dir / model_dir_name(model)} "
                "(run eval/run_eval.sh on it first)"
            )
        results.append(r)
    print(table(models, results))
    return 0


if __name__ == "__main__":
    run(main)
