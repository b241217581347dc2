"""A run's logs during training: `RunLogger` writes them, `truncate_logs` cuts them back to a
checkpoint before a resume. Their format and readers are gpt/runlog.py's.

Rank 0 writes metrics.jsonl and log.txt into the run directory (see gpt/runlog.py), the console
(one line per step above a progress bar), and TensorBoard and W&B when asked.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from gpt.cli import UserError
from gpt.config import TrainConfig
from gpt.fsio import write_text_atomic
from gpt.runlog import (
    FORMAT_KIND,
    LOG_KINDS,
    METRICS_FILE,
    TEXT_LOG_FILE,
    decode_record,
    encode_record,
    format_record,
)

# ----------------------------------------------------------------------------- writing


class RunLogger:
    """Rank 0's outputs: console lines (above a progress bar), RUN/metrics.jsonl, RUN/log.txt
    and, when asked, TensorBoard and Weights & Biases. On other ranks every method is a no-op."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, enabled: bool, fresh: bool) -> None:
        """`fresh`: a new run, whose logs replace any left by a run that never checkpointed;
        else the logs (truncated to the checkpoint: `truncate_logs`) are appended to."""
        self.enabled = enabled
        self.bar: tqdm[Any] | None = None
        self.tb: Any = None
        self.wandb: Any = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.tensorboard:
            self.tb = _tensorboard_writer(run_dir / "tensorboard")
        if cfg.wandb:
            self.wandb = _wandb_run(cfg, run_dir)
        mode = "w" if fresh else "a"
        self.metrics: TextIO = (run_dir / METRICS_FILE).open(mode, encoding="utf-8")
        self.text: TextIO = (run_dir / TEXT_LOG_FILE).open(mode, encoding="utf-8")
        if fresh:
            self._write_record(format_record())

    def start_progress(self, total: int, initial: int, show: bool) -> None:
        """A progress bar over the run's steps (with an ETA), when `show`."""
        if self.enabled and show:
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def print(self, message: str) -> None:
        """A console line (kept above the progress bar)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def advance(self) -> None:
        """One more step on the progress bar."""
        if self.bar is not None:
            self.bar.update(1)

    def event(self, step: int, tokens: int, kind: str, value: float | str, **extras: Any) -> None:
        """One event into metrics.jsonl (all kinds) and the seed's text log (numeric kinds)."""
        if not self.enabled:
            return
        self._write_record({"step": step, "tokens": tokens, "kind": kind, "value": value, **extras})
        if kind in LOG_KINDS and isinstance(value, float):
            self.text.write(f"{step:2d} ({tokens}) {kind} {value:.4f}\n")
            self.text.flush()
        if isinstance(value, float):
            if self.tb is not None:
                self.tb.add_scalar(kind, value, step)
            if self.wandb is not None:
                self.wandb.log({kind: value, "tokens": tokens}, step=step)

    def _write_record(self, record: dict[str, Any]) -> None:
        self.metrics.write(encode_record(record) + "\n")
        self.metrics.flush()

    def close(self) -> None:
        """Close the files, the progress bar and the optional loggers."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        self.metrics.close()
        self.text.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _tensorboard_writer(log_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            "--tensorboard needs the tensorboard package: pip install tensorboard"
        ) from None
    return SummaryWriter(str(log_dir))


def _wandb_run(cfg: TrainConfig, run_dir: Path) -> Any:
    try:
        import wandb
    except ImportError:
        raise UserError("--wandb needs the wandb package: pip install wandb") from None
    return wandb.init(project=cfg.wandb_project, dir=str(run_dir), config=cfg.to_dict())


# ----------------------------------------------------------------------------- resuming


def truncate_logs(run_dir: Path, step: int) -> None:
    """Before resuming at `step`: drop what the interrupted run logged after its checkpoint
    (train events of steps >= step, anything of later steps, a half-written last line). The
    format record stays."""

    def keep(s: int, kind: str) -> bool:
        return s < step or (s == step and kind != "train")

    def keep_record(line: str) -> bool:
        try:
            record = decode_record(line)
        except ValueError:  # a half-written last line (json.JSONDecodeError is a ValueError)
            return False
        return record["kind"] == FORMAT_KIND or keep(record["step"], record["kind"])

    def keep_text(line: str) -> bool:
        parts = line.split()
        return len(parts) == 4 and parts[0].isdigit() and keep(int(parts[0]), parts[2])

    _keep_lines(run_dir / METRICS_FILE, keep_record)
    _keep_lines(run_dir / TEXT_LOG_FILE, keep_text)


def _keep_lines(path: Path, keep: Callable[[str], bool]) -> None:
    """Rewrite `path` (atomically) with the lines that `keep` accepts; nothing if it is absent."""
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        write_text_atomic(path, "".join(line + "\n" for line in lines if keep(line)))
