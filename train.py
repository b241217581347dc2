"""Train a GPT: the GPT-α 124M recipe by default, any preset or config file, one device or many.

    python train.py                                        # gpt2 recipe on cache/fineweb_edu_10B
    python train.py --preset demo                          # the 5-minute CPU demo (gpt/demo.py)
    python train.py --config my_run.toml --max-steps 100   # a config file, a flag on top
    python train.py --resume                               # continue the newest checkpoint in --out
    torchrun --standalone --nproc_per_node=8 train.py      # DDP over 8 GPUs (--fsdp to shard)

Settings resolve in this order, later winning: the preset (--preset, else the config file's
`preset`, else gpt2), the TOML config file (TrainConfig field names as keys), explicit flags.
The resolved settings are saved as RUN/config.json. Reference figures of the default recipe
(8xA100, 10B tokens): val loss 3.07, HellaSwag 0.31 (../shared/data/reference/gpt-alpha).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpt import distributed
from gpt.cli import ArgumentParser, UserError, add_dataclass_args, explicit_values, run
from gpt.config import TRAIN_PRESETS, TrainConfig, train_preset
from gpt.demo import run_demo
from gpt.finish import finish_run
from gpt.train.loop import NonFiniteLossError, TrainResult, train
from gpt.train.rundir import RunPlan, claimed, plan_resume


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        description="Train a GPT-2 style model (GPT-α recipe by default).",
        epilog="--resume alone means --resume latest. Multi-GPU/multi-node: launch with torchrun.",
    )
    parser.add_argument(
        "--preset",
        choices=list(TRAIN_PRESETS),
        default=None,
        help="named recipe; demo and modern-demo also make their tokeniser and data (default gpt2)",
    )
    parser.add_argument(
        "--config", metavar="FILE.toml", default=None, help="TOML file of TrainConfig fields"
    )
    add_dataclass_args(parser, TrainConfig)
    return parser


def bare_resume(argv: Sequence[str]) -> list[str]:
    """`--resume` without a value means `--resume latest`."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--resume" and (i + 1 == len(out) or out[i + 1].startswith("--")):
            out[i] = "--resume=latest"
    return out


def read_toml(path: str) -> dict[str, Any]:
    """A config file's table, keys spelt as TrainConfig fields (`max-lr` -> `max_lr`); tomllib on
    Python >= 3.11, else the tomli package."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise UserError("--config needs Python >= 3.11 or: pip install tomli") from None
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--config {path}: no such file")
    try:
        table = tomllib.loads(file.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: invalid TOML ({e})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    return {key.replace("-", "_"): value for key, value in table.items()}


def resolve_config(args: argparse.Namespace) -> tuple[str, TrainConfig, RunPlan]:
    """(preset name, the run's TrainConfig, the run's plan: gpt/train/rundir.py).

    A new run: the preset < the config file < explicit flags. A resumed run (--resume): the
    settings its checkpoint was saved with < the config file < explicit flags, in the
    checkpoint's run directory; the preset only supplies the default --out, and every stated
    change is announced (see rundir.plan_resume).
    """
    from_file = read_toml(args.config) if args.config else {}
    preset = args.preset or from_file.pop("preset", None) or "gpt2"
    from_file.pop("preset", None)
    if preset not in TRAIN_PRESETS:
        raise UserError(f"{args.config}: unknown preset {preset!r}")
    if from_file:
        try:
            train_preset(preset, **from_file)
        except UserError as e:
            raise UserError(f"{args.config}: {e}") from None
    flags = explicit_values(args, TrainConfig)
    stated = {**from_file, **flags}
    if stated.get("resume") is None:
        cfg = train_preset(preset, **stated)
        return preset, cfg, RunPlan(cfg)
    default_out = TRAIN_PRESETS[preset].get("out", TrainConfig.out)
    origins = {k: "command line" if k in flags else f"config file {args.config}" for k in stated}
    plan = plan_resume(stated, origins, default_out)
    return preset, plan.cfg, plan


def report(result: TrainResult) -> None:
    val = f"{result.final_val_loss:.4f}" if result.final_val_loss is not None else "n/a"
    best = f"{result.best_val_loss:.4f}" if result.best_val_loss is not None else "n/a"
    distributed.print0(
        f"done: {result.steps} steps, {result.tokens:,} tokens | final val loss {val}, best "
        f"{best} ({result.best_checkpoint}) | export {result.export_dir or 'none'}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(bare_resume(sys.argv[1:] if argv is None else argv))
    preset, cfg, plan = resolve_config(args)
    env = distributed.setup(cfg.device)
    for line in plan.changes:
        distributed.print0(line)
    try:
        if preset in ("demo", "modern-demo"):
            run_demo(cfg, env=env, plan=plan)
        else:  # the run directory held from the first step to the export's last file
            with claimed(lambda: plan) as held:
                report(finish_run(train(cfg, env, held), cfg))
    except NonFiniteLossError as e:  # every rank sees the same all-reduced loss: all stop here
        print(f"error: {e}", file=sys.stderr)
        distributed.cleanup()
        return 1
    except BaseException:
        # This rank failed, perhaps alone while the others wait in a collective (rank 0 writing
        # a checkpoint or the export): abort rather than leave the process group cleanly, so
        # that their collectives fail at once and the job ends instead of hanging.
        distributed.abort()
        raise
    distributed.cleanup()
    return 0


if __name__ == "__main__":
    run(main)
