"""After a run: its best checkpoint exported as a Hugging Face directory (RUN/export) and its curves
plotted (RUN/plots), on rank 0, once `gpt.train.loop.train` has returned. train.py and the demo
(gpt/demo.py) both end a run through `finish_run`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gpt import distributed
from gpt.checkpoint import load_model_dir
from gpt.config import TrainConfig
from gpt.hf import save_pretrained
from gpt.hf_card import run_facts
from gpt.plot import plot_runs
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
    and a model card (gpt/hf_card.py: the run's facts, its last HellaSwag score included)."""
    model, meta = load_model_dir(checkpoint)
    return save_pretrained(model, out_dir, meta["tokeniser"], run_facts(checkpoint))


def plot(run_dir: Path, say: Say) -> list[Path]:
    """The run's curves in RUN/plots (gpt/plot.py); skipped with a line without matplotlib."""
    try:
        paths = plot_runs([run_dir], run_dir / "plots")
    except ImportError as e:  # matplotlib, imported by gpt/plot.py when it draws
        say(f"plots: skipped ({e})")
        return []
    say(f"plots: {', '.join(str(p) for p in paths)}")
    return paths
