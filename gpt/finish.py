"""After a run: its best checkpoint exported as a Hugging Face directory (RUN/export) and its curves
plotted (RUN/plots), on rank 0, once `gpt.train.loop.train` has returned. train.py and the demo
(gpt/demo.py) both end a run through `finish_run`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from gpt import distributed
from gpt.checkpoint import load_model_dir
from gpt.config import TrainConfig
from gpt.hf import save_pretrained
from gpt.hf_card import run_facts
from gpt.plot import plot_runs
from gpt.train.logs import read_events, run_log
from gpt.train.loop import TrainResult

Say = Callable[[str], None]


def finish_run(result: TrainResult, cfg: TrainConfig, say: Say = distributed.print0) -> TrainResult:
    """Export (--export) and plot (--plot) the run on rank 0, filling in result.export_dir and
    result.plots; every rank waits for rank 0 to be done."""
    if distributed.is_main():
        best = result.best_checkpoint
        if cfg.export and best is not None:
            result.export_dir = export(best, result.run_dir / "export")
            say(f"exported {best} as a Hugging Face model in {result.export_dir}")
        if cfg.plot:
            result.plots = plot(result.run_dir, say)
    distributed.barrier()
    return result


def export(checkpoint: Path, out_dir: Path) -> Path:
    """A checkpoint as a Hugging Face model directory, with the tokeniser it was trained with
    and a model card that includes the run's last HellaSwag score up to the checkpoint."""
    model, meta = load_model_dir(checkpoint)
    facts = run_facts(checkpoint)
    if facts is not None:
        run_dir = checkpoint.resolve().parent.parent
        events = read_events(run_log(run_dir))
        scores = [float(v) for s, _, kind, v in events if kind == "hella" and s <= facts.step]
        facts = dataclasses.replace(facts, hellaswag=scores[-1] if scores else None)
    return save_pretrained(model, out_dir, meta["tokeniser"], facts)


def plot(run_dir: Path, say: Say) -> list[Path]:
    """The run's curves in RUN/plots (gpt/plot.py); skipped with a line without matplotlib."""
    try:
        paths = plot_runs([run_dir], run_dir / "plots")
    except ImportError as e:  # matplotlib, imported by gpt/plot.py when it draws
        say(f"plots: skipped ({e})")
        return []
    say(f"plots: {', '.join(str(p) for p in paths)}")
    return paths
