"""The training loop, top to bottom: build the run, step, evaluate, save.

    python train.py                                       # the GPT-α 124M recipe, one device
    torchrun --standalone --nproc_per_node=8 train.py     # the same on 8 GPUs

`train(cfg)` runs a TrainConfig on this process's rank (see gpt/distributed.py) and returns a
TrainResult; exporting and plotting the run come after it (gpt/finish.py). Each optimizer step
reads `accum` micro-batches per rank, averages the loss over micro-steps and ranks (gradients
are synchronised on the last micro-step only), clips the gradient norm, and sets the learning
rate of the schedule. This module only sequences; the pieces it calls live beside it (listed
in gpt/train/__init__.py), and it never asks whether DDP, FSDP or compile is in use.

Events follow the seed's text log: at step s (0-based) the `train` loss of that step, and, when
s is a multiple of eval_every (and once more after the last step, at s = max_steps), `val`,
`hella` and `ckpt` computed BEFORE step s's update, i.e. on the model after s steps. Every event
of step s is labelled with (s + 1) * total_batch_size tokens, as in the reference logs
(`100 (52953088) val 6.6388`). Checkpoint step_XXXXXXX holds the state after XXXXXXX steps.

Reference (../shared/data/reference/gpt-alpha/train_log_10B.txt, 8xA100, 10B tokens): val loss
3.07 and HellaSwag 0.31 after 19,073 steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gpt import distributed
from gpt.capability import describe, dtype_choice, dtype_name
from gpt.config import GPTConfig, TrainConfig
from gpt.data.loader import DataLoader
from gpt.data.shards import read_manifest, split_tokens
from gpt.data.tokeniser import Tokeniser
from gpt.distributed import DistEnv
from gpt.fsio import write_json_atomic
from gpt.hellaswag.score import evaluate as hellaswag_evaluate
from gpt.model.base import LanguageModel
from gpt.model.generate import generate
from gpt.train import inputs, rundir
from gpt.train.batch import resolve_batch_size
from gpt.train.logs import RunLogger
from gpt.train.mfu import MFU
from gpt.train.optimizers import MuonAdamW, Optimizer
from gpt.train.parallel import Parallel, make_parallel
from gpt.train.recipe import (
    apply_optimizer_settings,
    default_max_steps,
    grad_accum_steps,
    lr_at,
    rates_line,
    set_lr,
)
from gpt.train.state import (
    OPTIMIZER_FILE,
    Progress,
    TrainingState,
    capture_rng_state,
    check_world_size,
    load_training_state,
    restore_rng_state,
    save_checkpoint,
)


class NonFiniteLossError(RuntimeError):
    """The loss (or gradient norm) became NaN or infinite: the run stops."""


@dataclass
class TrainResult:
    """What a finished run reports (export_dir and plots are filled in by gpt/finish.py)."""

    run_dir: Path
    steps: int
    tokens: int
    final_val_loss: float | None
    best_val_loss: float | None
    best_checkpoint: Path | None
    export_dir: Path | None = None
    plots: list[Path] = field(default_factory=list)


@dataclass
class Run:
    """Everything the loop touches."""

    cfg: TrainConfig
    env: DistEnv
    parallel: Parallel
    run_dir: Path
    model_config: GPTConfig
    model: LanguageModel
    """The plain module (parameters shared with train_model; sharded under FSDP)."""
    train_model: nn.Module
    """What the training step calls: model, wrapped by DDP and/or compiled."""
    optimizer: Optimizer
    train_loader: DataLoader
    val_loader: DataLoader | None
    val_steps: int
    tokeniser: Tokeniser
    hellaswag: list[dict[str, Any]] | None
    accum: int
    max_steps: int
    mfu: MFU
    log: RunLogger
    progress: Progress = field(default_factory=Progress)
    resumed: bool = False

    @property
    def device(self) -> torch.device:
        return self.env.device

    @property
    def step(self) -> int:
        return self.progress.step

    def tokens_at(self, step: int) -> int:
        """The seed's label of step s: (s + 1) * total_batch_size tokens."""
        return (step + 1) * self.cfg.total_batch_size


def train(
    cfg: TrainConfig, env: DistEnv | None = None, plan: rundir.RunPlan | None = None
) -> TrainResult:
    """Run (or resume) a training run on this rank, as `plan` says (train.py plans it from what
    the user stated), else as the complete settings `cfg` say (rundir.plan_run). Every rank
    follows rank 0's plan (the ranks' files may differ), and rank 0 holds the run directory's
    lock until the run ends (rundir.claimed)."""
    env = env or distributed.setup(cfg.device)
    with rundir.claimed(lambda: plan or rundir.plan_run(cfg)) as claimed:
        run = build_run(claimed, env)
        try:
            loop(run)
        finally:
            run.log.close()
    progress = run.progress
    return TrainResult(
        run_dir=run.run_dir,
        steps=run.max_steps,
        tokens=progress.tokens,
        final_val_loss=progress.last_val_loss,
        best_val_loss=progress.best_val_loss,
        best_checkpoint=progress.best_checkpoint or rundir.latest_checkpoint(run.run_dir),
    )


# ----------------------------------------------------------------------------- building the run


def build_run(plan: rundir.RunPlan, env: DistEnv) -> Run:
    """Read the data, build (or restore) the model, optimizer and loaders, as `plan` says."""
    cfg, run_dir, checkpoint = plan.cfg, plan.run_dir, plan.checkpoint
    manifest = read_manifest(cfg.data)
    tok = inputs.check_tokeniser(cfg, manifest)
    model_config = inputs.model_shape(cfg, manifest)
    cfg, batch_line = resolve_batch_size(cfg, model_config, env)  # --batch-size auto
    accum = grad_accum_steps(cfg, env.world_size)
    max_steps = cfg.max_steps or default_max_steps(cfg, split_tokens(manifest, "train"))
    distributed.decide_on_rank0(lambda: rundir.check_unchanged(plan))  # the inputs checked first
    state = None
    if checkpoint is not None:
        state = load_training_state(checkpoint)
        check_world_size(state, checkpoint, env.world_size)

    parallel = make_parallel(cfg, env)
    torch.manual_seed(cfg.seed)
    model, train_model = parallel.build_model(model_config, checkpoint)
    val_loader, val_steps = inputs.val_loader(cfg, env, manifest, tok)
    if env.is_main and state is not None:
        rundir.start_from(plan, state)  # the checkpoint loaded: set a rewound branch aside
    run = Run(
        cfg=cfg,
        env=env,
        parallel=parallel,
        run_dir=run_dir,
        model_config=model_config,
        model=model,
        train_model=train_model,
        optimizer=parallel.optimizer(model, cfg),
        train_loader=inputs.loader(cfg, env, tok, "train"),
        val_loader=val_loader,
        val_steps=val_steps,
        tokeniser=tok,
        hellaswag=None,
        accum=accum,
        max_steps=max_steps,
        mfu=MFU.for_run(
            cfg, env.device, parallel.dtype, model.flops_per_token(cfg.seq_len), env.world_size
        ),
        log=RunLogger(run_dir, cfg, env.is_main, fresh=state is None),
    )
    if checkpoint is not None and state is not None:
        restore(run, state, checkpoint)
    run.hellaswag = inputs.load_hellaswag(cfg, run.log.print)
    write_run_config(run, manifest)
    if batch_line is not None:
        run.log.print(batch_line)
    return run


def restore(run: Run, state: TrainingState, path: Path) -> None:
    """Hand each component its part of the checkpoint: optimizer, loader, RNG, progress."""
    run.parallel.load_optimizer_state(
        run.model, run.optimizer, state.optimizer, path / OPTIMIZER_FILE
    )
    apply_optimizer_settings(run.optimizer, run.cfg)
    run.train_loader.load_state_dict(state.loader[run.env.rank])
    restore_rng_state(state.rng[run.env.rank], run.device)
    run.progress.load_state_dict(state.progress())
    run.progress.best_checkpoint = rundir.best_checkpoint(run.run_dir)
    run.progress.last_checkpoint = path
    run.resumed = True
    run.log.print(f"resumed from {path} at step {state.step} ({state.tokens:,} tokens)")


def write_run_config(run: Run, manifest: dict[str, Any]) -> None:
    """RUN/config.json: the resolved configuration and what was derived from it."""
    if not run.env.is_main:
        return
    resolved = {
        "train": run.cfg.to_dict(),
        "model": run.model_config.to_dict(),
        "world_size": run.env.world_size,
        "grad_accum_steps": run.accum,
        "max_steps": run.max_steps,
        "device": str(run.device),
        "dtype": dtype_name(run.parallel.dtype),
        "tokeniser": {"spec": run.tokeniser.spec, "fingerprint": run.tokeniser.fingerprint},
        "data": {"source": manifest["source"], "train_tokens": split_tokens(manifest, "train")},
        "parameters": run.model.num_params(),
    }
    write_json_atomic(run.run_dir / "config.json", resolved)
    run.log.print(
        f"{run.cfg.model}: {run.model.num_params():,} parameters | {run.env.world_size} rank(s) "
        f"on {run.device}, {resolved['dtype']} | {run.max_steps} steps of "
        f"{run.cfg.total_batch_size:,} tokens (grad accum {run.accum})"
    )
    run.log.print(numerics_line(run))
    if isinstance(run.optimizer, MuonAdamW):
        run.log.print(rates_line(run.cfg))


def numerics_line(run: Run) -> str:
    """What the device does natively and the dtypes chosen from it, e.g. "cpu: AMD EPYC, AVX2,
    no native bfloat16 -> autocast float32, Newton-Schulz in float32"."""
    choices = [f"autocast {dtype_choice(run.parallel.dtype, run.device)}"]
    if isinstance(run.optimizer, MuonAdamW):
        choices.append(f"Newton-Schulz in {dtype_name(run.optimizer.muon.ns_dtype)}")
    return f"{describe(run.device)} -> {', '.join(choices)}"


# ----------------------------------------------------------------------------- the loop


def loop(run: Run) -> None:
    """Steps progress.step .. max_steps - 1; evaluation and checkpoints at the top of a step.
    A checkpoint is written only after a finite loss was measured on its weights (the step's
    validation loss, else `check_weights_before_save`), so that every checkpoint is one to
    resume from."""
    run.log.start_progress(run.max_steps, run.step, run.cfg.progress)
    first = run.step
    for step in range(first, run.max_steps + 1):
        run.progress.step = step
        done_here = run.resumed and step == first  # evaluated and saved before the checkpoint
        last = step == run.max_steps
        saved = measured = False
        if not done_here and (step % run.cfg.eval_every == 0 or last):
            saved = evaluate(run)  # stops the run at a non-finite validation loss
            measured = run.val_loader is not None
        periodic = run.cfg.save_every and step % run.cfg.save_every == 0 and step > 0
        if not done_here and not saved and (periodic or last):
            if not measured:
                check_weights_before_save(run)
            save(run, best=False)
        if last:
            break
        train_step(run)
        run.log.advance()


def train_step(run: Run) -> None:
    """One optimizer step: accum micro-batches, loss averaged over them and the ranks."""
    cfg, device, step, parallel = run.cfg, run.device, run.step, run.parallel
    start = time.perf_counter()
    run.train_model.train()
    loss_sum = torch.zeros((), device=device)
    for micro in range(run.accum):
        x, y = run.train_loader.next_batch()  # (B, T) int64 each
        x, y = parallel.to_device(x), parallel.to_device(y)
        last_micro = micro == run.accum - 1
        with parallel.grad_sync(run.model, run.train_model, last_micro), parallel.autocast():
            _, loss = run.train_model(x, y)
        loss = loss / run.accum
        loss_sum += loss.detach()
        loss.backward()
    distributed.all_reduce_mean(loss_sum)
    loss_value = loss_sum.item()
    check_finite(run, "loss", loss_value)
    norm = parallel.clip_grad_norm(run.model, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
    check_finite(run, "gradient norm", norm)
    lr = lr_at(step, cfg, run.max_steps)  # max_lr's: every group follows it from its own peak
    set_lr(run.optimizer, step, cfg, run.max_steps)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = time.perf_counter() - start
    run.progress.tokens += cfg.total_batch_size
    log_step(run, loss_value, lr, norm, dt)


def check_finite(run: Run, what: str, value: float) -> None:
    """Stop the run at a NaN or infinite loss or gradient norm, naming the last checkpoint,
    which had a finite loss (`loop` saves none before one was measured on its weights)."""
    if math.isfinite(value):
        return
    good = run.progress.last_checkpoint
    advice = (
        f"Last checkpoint with a finite loss: {good}; resume from it with --resume {good} and a "
        "lower --max-lr"
        if good is not None
        else "No checkpoint was written: start again with a lower --max-lr"
    )
    raise NonFiniteLossError(
        f"non-finite {what} ({value}) at step {run.step}: training stopped. {advice}"
    )


def log_step(run: Run, loss: float, lr: float, norm: float, dt: float) -> None:
    """The step's train event (every step) and console line (every log_every steps)."""
    tok_s = run.cfg.total_batch_size / dt
    mfu = run.mfu.of(tok_s)
    extras: dict[str, Any] = {"lr": lr, "grad_norm": norm, "dt_ms": dt * 1e3, "tok_s": tok_s}
    if mfu is not None:
        extras["mfu"] = mfu
    run.log.event(run.step, run.tokens_at(run.step), "train", loss, **extras)
    if run.step % run.cfg.log_every == 0 or run.step == run.max_steps - 1:
        mfu_text = f" | MFU {100 * mfu:5.2f}%" if mfu is not None else ""
        run.log.print(
            f"step {run.step:6d}/{run.max_steps} | loss {loss:.6f} | lr {lr:.4e} | "
            f"norm {norm:.4f} | {dt * 1e3:8.1f} ms | {tok_s:10,.0f} tok/s{mfu_text}"
        )


# ----------------------------------------------------------------------------- evaluation


def evaluate(run: Run) -> bool:
    """Validation loss, HellaSwag and samples at the top of the step; save a checkpoint when the
    validation loss is a new best. Returns whether a checkpoint was saved."""
    tokens = run.tokens_at(run.step)
    progress = run.progress
    run.mfu.remeasure()
    with run.parallel.eval_model(run.model) as model, torch.no_grad():
        if run.val_loader is not None:
            val = validation_loss(run, model)
            run.log.event(run.step, tokens, "val", val)
            run.log.print(f"step {run.step:6d} | val loss {val:.4f}")
            check_finite(run, "validation loss", val)  # before anything is saved or sampled
            progress.last_val_loss = val
        if run.hellaswag is not None:
            hellaswag(run, model, tokens)
        if run.cfg.samples and run.env.is_main:
            sample(run, model, tokens)
    val = progress.last_val_loss
    if val is not None and (progress.best_val_loss is None or val < progress.best_val_loss):
        progress.best_val_loss = val
        save(run, best=True)
        return True
    return False


def validation_loss(run: Run, model: LanguageModel) -> float:
    """Mean loss over val_steps batches of the validation split, from its start, over ranks."""
    val_loader = run.val_loader
    assert val_loader is not None
    val_loader.reset()
    return mean_loss(run, model, (val_loader.next_batch() for _ in range(run.val_steps)))


def check_weights_before_save(run: Run) -> None:
    """Before a checkpoint that no validation loss vouches for (none at this step, or no val
    split): stop the run unless the current weights give a finite loss on the training
    micro-batch that this step reads first. The batch is peeked (the loader's position is put
    back), so the run's data order is unchanged."""
    position = run.train_loader.state_dict()
    batch = run.train_loader.next_batch()
    run.train_loader.load_state_dict(position)
    with run.parallel.eval_model(run.model) as model, torch.no_grad():
        check_finite(run, "loss", mean_loss(run, model, iter([batch])))


def mean_loss(
    run: Run, model: LanguageModel, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
) -> float:
    """The model's mean loss over this rank's `batches` (at least one), averaged over ranks."""
    total = torch.zeros((), device=run.device)
    count = 0
    for x, y in batches:
        with run.parallel.autocast():
            _, loss = model(run.parallel.to_device(x), run.parallel.to_device(y))
        total += loss.detach().float()
        count += 1
    total /= count
    distributed.all_reduce_mean(total)
    return total.item()


def hellaswag(run: Run, model: LanguageModel, tokens: int) -> None:
    """HellaSwag accuracy of the current model, its examples spread over the ranks."""
    assert run.hellaswag is not None
    with run.parallel.autocast():
        result = hellaswag_evaluate(
            model,
            run.tokeniser,
            run.hellaswag,
            device=run.device,
            rank=run.env.rank,
            world_size=run.env.world_size,
        )
    extras = {k: result[k] for k in ("acc", "acc_norm_bytes", "n", "cut")}
    run.log.event(run.step, tokens, "hella", float(result["acc_norm"]), **extras)
    # Items longer than the model's context are scored cut from the left (see
    # gpt.hellaswag.score.fit_context)
    cut = f" ({result['cut']} of {result['n']} cut to fit the context)" if result["cut"] else ""
    run.log.print(f"step {run.step:6d} | hellaswag acc_norm {result['acc_norm']:.4f}{cut}")


def sample(run: Run, model: LanguageModel, tokens: int) -> None:
    """A few continuations of the sample prompt (rank 0), into the logs. The prompt follows an
    end-of-text token, as every training document does."""
    cfg, tok = run.cfg, run.tokeniser
    prompt = [tok.eot_token, *tok.encode(cfg.sample_prompt)]
    idx = torch.tensor([prompt] * cfg.samples, dtype=torch.long, device=run.device)
    generator = torch.Generator(device=run.device).manual_seed(cfg.sample_seed)
    with run.parallel.autocast():
        out = generate(
            model,
            idx,
            cfg.sample_tokens,
            temperature=cfg.sample_temperature,
            top_k=cfg.sample_top_k or None,
            eos_token=tok.eot_token,
            generator=generator,
        )
    for i, row in enumerate(out.tolist()):
        new = row[len(prompt) :]
        if tok.eot_token in new:
            new = new[: new.index(tok.eot_token)]
        text = cfg.sample_prompt + tok.decode(new)
        run.log.event(run.step, tokens, "sample", text, index=i)
        run.log.print(f"sample {i}: {text!r}")


# ----------------------------------------------------------------------------- checkpoints


def save(run: Run, best: bool) -> Path:
    """Checkpoint the state after run.step steps, assembled from the components' states (every
    rank takes part; rank 0 writes)."""
    path = rundir.step_dir(run.run_dir, run.step)
    model_state, optim_state = run.parallel.full_states(run.model, run.optimizer)
    loaders = distributed.all_gather_objects(run.train_loader.state_dict())
    rngs = distributed.all_gather_objects(capture_rng_state(run.device))
    progress = run.progress
    if best:
        progress.best_step = run.step
    if run.env.is_main:
        state = TrainingState(
            **progress.state_dict(),
            world_size=run.env.world_size,
            train_config=run.cfg.to_dict(),
            optimizer=optim_state,
            loader=loaders,
            rng=[_cpu(r) for r in rngs],
        )
        tok = run.tokeniser
        save_checkpoint(path, model_state, run.model_config, state, tok.spec, tok.fingerprint)
        if best:
            rundir.mark_best(run.run_dir, path)
        rundir.prune_checkpoints(run.run_dir, run.cfg.keep)
        if best and progress.best_val_loss is not None:
            tokens = run.tokens_at(run.step)
            run.log.event(run.step, tokens, "ckpt", progress.best_val_loss, path=str(path))
        run.log.print(f"step {run.step:6d} | saved {path}{' (best)' if best else ''}")
    distributed.barrier()
    progress.last_checkpoint = path
    if best:
        progress.best_checkpoint = path
    return path


def _cpu(rng: dict[str, Any]) -> dict[str, Any]:
    """RNG states gathered from another rank, as CPU tensors."""
    return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in rng.items()}
