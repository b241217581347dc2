"""The training loop: optimizer, learning-rate schedule, evaluation, checkpoints and logs.

    python train.py                                       # the GPT-α 124M recipe, one device
    torchrun --standalone --nproc_per_node=8 train.py     # the same on 8 GPUs

`train(cfg)` runs a TrainConfig on this process's rank (see gpt/distributed.py). Each optimizer
step reads `accum` micro-batches per rank (total_batch_size = batch_size * seq_len * world_size *
accum tokens), averages the loss over micro-steps and ranks (DDP synchronises gradients on the
last micro-step only; FSDP2 likewise), clips the gradient norm, and sets the learning rate:
linear warm-up, cosine decay to min_lr_ratio * max_lr at max_steps, flat after.

The model module knows nothing of DDP, FSDP, compile or autocast; they are applied here, and an
unwrapped, uncompiled handle serves validation, HellaSwag and sampling (under FSDP a gathered
full copy), so compilation can never break them.

Events follow the seed's text log: at step s (0-based) the `train` loss of that step, and, when
s is a multiple of eval_every (and once more after the last step, at s = max_steps), `val`,
`hella` and `ckpt` computed BEFORE step s's update, i.e. on the model after s steps. Every event
of step s is labelled with (s + 1) * total_batch_size tokens, as in the reference logs
(`100 (52953088) val 6.6388`). Checkpoint step_XXXXXXX holds the state after XXXXXXX steps.

Reference (../shared/data/reference/gpt-alpha/train_log_10B.txt, 8xA100, 10B tokens): val loss
3.07 and HellaSwag 0.31 after 19,073 steps.
"""

from __future__ import annotations

import inspect
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gpt import checkpoint as ckpt
from gpt import distributed
from gpt.cli import UserError
from gpt.config import GPTConfig, TrainConfig, fixed_setting_changes, model_preset
from gpt.data.loader import DataLoader
from gpt.data.shards import read_manifest
from gpt.data.tokeniser import Tokeniser, get_tokeniser
from gpt.distributed import DistEnv
from gpt.fsio import write_json_atomic, write_text_atomic
from gpt.model.gpt2 import GPT

# Peak FLOP/s of one GPU for MFU: (name fragment, dense bf16, dense TF32), from NVIDIA's
# datasheets (dense: half the "with sparsity" figures; GeForce cards: FP16/BF16 with FP32
# accumulate). Matched in this order against torch.cuda.get_device_name, so the more specific
# fragments come first ("H100 PCIe" before "H100", "GH200" before "H200", "A100" before "A10",
# "L40S" before "L40" before "L4"). Cards without bf16 (V100, T4) list their fp16 tensor peak
# and plain fp32.
GPU_PEAK_FLOPS: tuple[tuple[str, float, float], ...] = (
    ("GH200", 989e12, 494.7e12),
    ("H100 PCIe", 756.5e12, 378e12),
    ("H100 NVL", 835.5e12, 417.5e12),
    ("H100", 989.4e12, 494.7e12),  # SXM: "NVIDIA H100 80GB HBM3"
    ("H200 NVL", 835.5e12, 417.5e12),
    ("H200", 989.4e12, 494.7e12),  # SXM: "NVIDIA H200", "NVIDIA H200 141GB HBM3e"
    ("H800 PCIe", 756.5e12, 378e12),
    ("H800", 989.4e12, 494.7e12),
    ("A100", 312e12, 156e12),  # SXM4 and PCIe alike
    ("A800", 312e12, 156e12),
    ("A10G", 125e12, 62.5e12),  # AWS's A10 variant: no datasheet of its own, taken as the A10
    ("A10", 125e12, 62.5e12),
    ("A40", 149.7e12, 74.8e12),
    ("L40S", 362.05e12, 183e12),
    ("L40", 181.05e12, 90.5e12),
    ("L4", 121e12, 60e12),
    ("RTX 6000 Ada", 364.2e12, 182.1e12),
    ("A6000", 154.8e12, 77.4e12),  # "NVIDIA RTX A6000"
    ("RTX 4090", 165.2e12, 82.6e12),
    ("RTX 3090", 71e12, 35.6e12),
    ("V100-SXM", 125e12, 15.7e12),
    ("V100", 112e12, 14e12),  # PCIe
    ("T4", 65e12, 8.1e12),
)
LOG_KINDS = ("train", "val", "hella", "ckpt")  # the seed's text log holds these


class NonFiniteLossError(RuntimeError):
    """The loss (or gradient norm) became NaN or infinite: the run stops."""


@dataclass
class TrainResult:
    """What a finished run reports."""

    run_dir: Path
    steps: int
    tokens: int
    final_val_loss: float | None
    best_val_loss: float | None
    best_checkpoint: Path | None
    export_dir: Path | None = None
    plots: list[Path] = field(default_factory=list)


# ----------------------------------------------------------------------------- recipe arithmetic


def grad_accum_steps(cfg: TrainConfig, world_size: int) -> int:
    """Micro-steps per optimizer step; total_batch_size must split exactly over the ranks."""
    per_micro = cfg.batch_size * cfg.seq_len * world_size
    if cfg.total_batch_size % per_micro:
        raise UserError(
            f"total_batch_size {cfg.total_batch_size} is not a multiple of batch_size * seq_len * "
            f"world_size = {cfg.batch_size} * {cfg.seq_len} * {world_size} = {per_micro}"
        )
    return cfg.total_batch_size // per_micro


def default_max_steps(cfg: TrainConfig, train_tokens: int) -> int:
    """`epochs` passes over the training split, in whole optimizer steps."""
    steps = train_tokens * cfg.epochs // cfg.total_batch_size
    if steps < 1:
        raise UserError(
            f"{cfg.data}: the training split ({train_tokens:,} tokens) is smaller than one "
            f"optimizer step ({cfg.total_batch_size:,} tokens); lower --total-batch-size"
        )
    return steps


def lr_at(step: int, cfg: TrainConfig, max_steps: int) -> float:
    """Linear warm-up over warmup_steps, cosine decay to min_lr_ratio * max_lr at max_steps,
    flat after."""
    min_lr = cfg.max_lr * cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return cfg.max_lr * (step + 1) / cfg.warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.max_lr - min_lr)


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    """bfloat16 on CUDA and float32 elsewhere by default, or as asked."""
    if cfg.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32


def autocast(device: torch.device, dtype: torch.dtype) -> AbstractContextManager[Any]:
    """Mixed precision for the forward pass; nothing for float32."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def configure_optimizer(
    model: nn.Module, cfg: TrainConfig, device: torch.device, fused: bool | None = None
) -> torch.optim.AdamW:
    """AdamW with weight decay on >= 2-D parameters only (matmul weights, embeddings); fused
    kernels where this PyTorch has them for the device (unless `fused` says otherwise)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    if fused is None:
        fused = "fused" in inspect.signature(torch.optim.AdamW).parameters and device.type in (
            "cuda",
            "cpu",
        )
    return torch.optim.AdamW(
        groups, lr=cfg.max_lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused or None
    )


def apply_optimizer_settings(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> None:
    """Put the run's AdamW settings on the parameter groups. A loaded optimizer state carries
    the betas, eps and weight decay it was saved with; a resumed run uses its own settings (the
    learning rate is set at every step). The groups are configure_optimizer's: decayed, then not.
    """
    for group, weight_decay in zip(optimizer.param_groups, (cfg.weight_decay, 0.0), strict=True):
        group["betas"] = (cfg.beta1, cfg.beta2)
        group["eps"] = cfg.eps
        group["weight_decay"] = weight_decay


def measure_matmul_flops(
    device: torch.device, dtype: torch.dtype = torch.float32, n: int = 1024, seconds: float = 0.5
) -> float:
    """FLOP/s of the fastest of many square matmuls on `device` within `seconds`: the device's
    practical peak for MFU on CPU (the fastest one, so that other processes' load weighs less)."""
    generator = torch.Generator(device=device).manual_seed(0)  # leaves the global RNG alone
    a = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    a @ b  # warm-up
    best, deadline = math.inf, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def gpu_peak_flops(name: str, dtype: torch.dtype) -> float | None:
    """The datasheet peak of the GPU called `name` (torch.cuda.get_device_name) for autocast
    `dtype`: dense bf16 (fp16 on cards without bf16), or TF32 for float32 runs; None if unknown.

        >>> gpu_peak_flops("NVIDIA H100 PCIe", torch.bfloat16)
        756500000000000.0
    """
    for fragment, low_precision, tf32 in GPU_PEAK_FLOPS:
        if fragment in name:
            return tf32 if dtype == torch.float32 else low_precision
    return None


def peak_flops(cfg: TrainConfig, device: torch.device, dtype: torch.dtype) -> float | None:
    """Peak FLOP/s of one device for MFU: --peak-flops, a datasheet figure for known GPUs, a
    measurement on CPU (refined at each evaluation: see `refine_peak`), else None (no MFU; on
    an unknown GPU rank 0 prints one line saying so)."""
    if cfg.peak_flops is not None:
        return cfg.peak_flops
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak_flops(name, dtype)
        if peak is None:
            distributed.print0(
                f"MFU: not reported, no known peak for {name!r}; pass --peak-flops with the "
                "card's dense bf16 (or, for float32 runs, TF32) FLOP/s, e.g. --peak-flops 312e12"
            )
        return peak
    if device.type == "cpu":
        return measure_matmul_flops(device)
    return None


# ----------------------------------------------------------------------------- logs


class RunLogger:
    """Rank 0's outputs: console lines (above a progress bar), RUN/metrics.jsonl, RUN/log.txt
    and, when asked, TensorBoard and Weights & Biases. On other ranks every method is a no-op."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, enabled: bool, fresh: bool) -> None:
        """`fresh`: a new run, whose logs replace any left by a run that never checkpointed."""
        self.enabled = enabled
        self.run_dir = run_dir
        self.bar: Any = None
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
        self.metrics = (run_dir / "metrics.jsonl").open(mode, encoding="utf-8")
        self.text = (run_dir / "log.txt").open(mode, encoding="utf-8")

    def start_progress(self, total: int, initial: int, show: bool) -> None:
        if self.enabled and show:
            from tqdm import tqdm

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
        if self.bar is not None:
            self.bar.update(1)

    def event(self, step: int, tokens: int, kind: str, value: float | str, **extras: Any) -> None:
        """One event into metrics.jsonl (all kinds) and the seed's text log (numeric kinds)."""
        if not self.enabled:
            return
        record = {"step": step, "tokens": tokens, "kind": kind, "value": value, **extras}
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        if kind in LOG_KINDS and isinstance(value, float):
            self.text.write(f"{step:2d} ({tokens}) {kind} {value:.4f}\n")
            self.text.flush()
        if isinstance(value, float):
            if self.tb is not None:
                self.tb.add_scalar(kind, value, step)
            if self.wandb is not None:
                self.wandb.log({kind: value, "tokens": tokens}, step=step)

    def close(self) -> None:
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


def truncate_logs(run_dir: Path, step: int) -> None:
    """Before resuming at `step`: drop what the interrupted run logged after its checkpoint
    (train events of steps >= step, anything of later steps, a half-written last line)."""

    def keep(s: int, kind: str) -> bool:
        return s < step or (s == step and kind != "train")

    path = run_dir / "metrics.jsonl"
    if path.is_file():
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if keep(record["step"], record["kind"]):
                kept.append(line + "\n")
        write_text_atomic(path, "".join(kept))
    path = run_dir / "log.txt"
    if path.is_file():
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[0].isdigit() and keep(int(parts[0]), parts[2]):
                kept.append(line + "\n")
        write_text_atomic(path, "".join(kept))


# ----------------------------------------------------------------------------- the run


@dataclass
class Run:
    """Everything the loop touches."""

    cfg: TrainConfig
    env: DistEnv
    run_dir: Path
    model_config: GPTConfig
    model: GPT
    """The plain module (parameters shared with train_model; sharded under FSDP)."""
    train_model: nn.Module
    """What the training step calls: model, wrapped by DDP and/or compiled."""
    optimizer: torch.optim.Optimizer
    train_loader: DataLoader
    val_loader: DataLoader | None
    val_steps: int
    tokeniser: Tokeniser
    hellaswag: list[dict[str, Any]] | None
    accum: int
    max_steps: int
    dtype: torch.dtype
    peak: float | None
    """Peak FLOP/s of one device (None: MFU not reported)."""
    flops_per_token: int
    """Training FLOPs per token of the model at seq_len, for MFU."""
    log: RunLogger
    step: int = 0
    tokens: int = 0
    best_val_loss: float | None = None
    last_val_loss: float | None = None
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    """The checkpoint with the lowest validation loss, as saved by this run or its checkpoint."""
    resumed: bool = False

    @property
    def device(self) -> torch.device:
        return self.env.device

    def tokens_at(self, step: int) -> int:
        """The seed's label of step s: (s + 1) * total_batch_size tokens."""
        return (step + 1) * self.cfg.total_batch_size


def train(cfg: TrainConfig, env: DistEnv | None = None) -> TrainResult:
    """Run (or resume) a training run described by `cfg` on this rank."""
    env = env or distributed.setup(cfg.device)
    cfg = distributed.broadcast_object(cfg)  # rank 0's settings, should the ranks' files differ
    run = build_run(cfg, env)
    try:
        loop(run)
        return finish(run)
    finally:
        run.log.close()


def check_tokeniser(cfg: TrainConfig, manifest: dict[str, Any]) -> Tokeniser:
    """The run's tokeniser, which must be the one the data was prepared with."""
    tok = get_tokeniser(cfg.tokeniser)
    if tok.fingerprint != manifest["fingerprint"]:
        raise UserError(
            f"--tokeniser {cfg.tokeniser} ({tok.name}, fingerprint {tok.fingerprint[:12]}) does "
            f"not match {cfg.data}, prepared with {manifest['tokeniser_name']} (fingerprint "
            f"{manifest['fingerprint'][:12]}); pass the tokeniser of the data"
        )
    return tok


def split_tokens(manifest: dict[str, Any], split: str) -> int:
    return sum(s["tokens"] for s in manifest["shards"] if s["split"] == split)


def find_checkpoint(out: str | Path, resume: str) -> Path:
    """The checkpoint `--resume` names: the newest in the run directory `out` (latest), or a
    checkpoint directory."""
    if resume == "latest":
        path = ckpt.latest_checkpoint(out)
        if path is None:
            raise UserError(f"--resume latest: no checkpoint in {ckpt.checkpoints_dir(out)}")
        return path
    path = Path(resume)
    if not ckpt.is_checkpoint(path):
        raise UserError(f"--resume {path}: not a checkpoint directory")
    return path


@dataclass(frozen=True)
class RunDirectory:
    """What rank 0 finds in the run directory, shared with every rank (nodes may see different
    files, and every rank must take the same path through the collectives)."""

    resume_from: Path | None
    """The checkpoint to resume from (None: a new run)."""
    holds_a_run: bool
    """Whether the directory already has checkpoints."""


def inspect_run_directory(cfg: TrainConfig) -> RunDirectory:
    """What --out holds and which checkpoint --resume names (decided on rank 0)."""
    resume_from = find_checkpoint(cfg.out, cfg.resume) if cfg.resume is not None else None
    return RunDirectory(resume_from, bool(ckpt.list_checkpoints(cfg.out)))


def check_resumable(
    cfg: TrainConfig, state: ckpt.TrainingState, path: Path, world_size: int
) -> None:
    """A run resumes only with the data order and model of its checkpoint."""
    if state.world_size != world_size:
        raise UserError(
            f"{path} was written by {state.world_size} ranks; resume it with the same number "
            f"(now {world_size}) so that every rank's data position is restored"
        )
    changed = fixed_setting_changes(state.train_config, cfg.to_dict())
    if changed:
        name = changed[0]
        then, now = state.train_config.get(name), getattr(cfg, name)
        raise UserError(f"{path}: checkpoint has {name}={then!r}, this run {name}={now!r}")


def build_run(cfg: TrainConfig, env: DistEnv) -> Run:
    """Read the data, build (or restore) the model, optimizer and loaders."""
    manifest = read_manifest(cfg.data)
    tok = check_tokeniser(cfg, manifest)
    model_config = model_preset(
        cfg.model, vocab_size=manifest["vocab_size"], pad_vocab_multiple=cfg.pad_vocab_multiple
    )
    if cfg.seq_len > model_config.block_size:
        raise UserError(
            f"seq_len {cfg.seq_len} exceeds the {cfg.model} model's block_size "
            f"{model_config.block_size}"
        )
    accum = grad_accum_steps(cfg, env.world_size)
    max_steps = cfg.max_steps or default_max_steps(cfg, split_tokens(manifest, "train"))
    run_dir = Path(cfg.out)
    found = distributed.decide_on_rank0(lambda: inspect_run_directory(cfg))
    resume_from = found.resume_from
    state = ckpt.load_training_state(resume_from) if resume_from else None
    if state is not None and resume_from is not None:
        check_resumable(cfg, state, resume_from, env.world_size)
    elif found.holds_a_run:
        raise UserError(
            f"{run_dir} already holds a run with checkpoints: continue it with --resume, or "
            "choose another --out"
        )

    device = env.device
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls
    torch.manual_seed(cfg.seed)
    model, train_model = build_model(model_config, cfg, env, resume_from)
    optimizer = configure_optimizer(model, cfg, device, fused=False if cfg.fsdp else None)

    train_loader = DataLoader(
        cfg.data,
        batch_size=cfg.batch_size,
        seq_len=cfg.seq_len,
        split="train",
        rank=env.rank,
        world_size=env.world_size,
        seed=cfg.seed,
        fingerprint=tok.fingerprint,
    )
    val_loader, val_steps = make_val_loader(cfg, env, manifest, tok)

    if env.is_main and state is not None:
        truncate_logs(run_dir, state.step)
    dtype = autocast_dtype(cfg, device)
    run = Run(
        cfg=cfg,
        env=env,
        run_dir=run_dir,
        model_config=model_config,
        model=model,
        train_model=train_model,
        optimizer=optimizer,
        train_loader=train_loader,
        val_loader=val_loader,
        val_steps=val_steps,
        tokeniser=tok,
        hellaswag=None,
        accum=accum,
        max_steps=max_steps,
        dtype=dtype,
        peak=peak_flops(cfg, device, dtype),
        flops_per_token=model.flops_per_token(cfg.seq_len),
        log=RunLogger(run_dir, cfg, env.is_main, fresh=state is None),
    )
    if state is not None and resume_from is not None:
        restore(run, state, resume_from)
    run.hellaswag = load_hellaswag(run)
    write_run_config(run, manifest)
    return run


def build_model(
    config: GPTConfig, cfg: TrainConfig, env: DistEnv, resume_from: Path | None
) -> tuple[GPT, nn.Module]:
    """The plain model on this rank's device, initialised (or loaded from resume_from), and
    what the training step calls (see `wrap_model`).

    Under FSDP the model is built on the meta device, sharded, and only then given memory and
    weights, so no device ever holds the whole model: GPT's own initialisation, parameter by
    parameter (`initialise_sharded`), or the checkpoint's weights, read whole into CPU memory
    first (`load_sharded_weights`).
    """
    if not cfg.fsdp:
        model = GPT(config)
        if resume_from is not None:
            ckpt.load_weights(model, resume_from)
        model.to(env.device)
        return model, wrap_model(model, cfg, env)
    with torch.device("meta"):
        model = GPT(config)
    train_model = wrap_model(model, cfg, env)
    model.to_empty(device=env.device)
    if resume_from is not None:
        load_sharded_weights(model, resume_from)
    else:
        initialise_sharded(model)
    return model, train_model


def apply_order(module: nn.Module) -> Iterator[nn.Module]:
    """Modules in the order nn.Module.apply visits them: each one's children first."""
    for child in module.children():
        yield from apply_order(child)
    yield module


def on_full_parameters(
    module: nn.Module, fn: Callable[[nn.Module], object], names: Iterable[str]
) -> dict[str, torch.Tensor]:
    """Run fn(module) with its own parameters `names` swapped for uninitialised full-size CPU
    tensors (a sharded or meta parameter's global shape); those tensors, as fn left them."""
    own = module._parameters
    kept = {n: own[n] for n in names}
    full = {n: torch.empty(p.shape, dtype=p.dtype) for n, p in kept.items() if p is not None}
    try:
        own.update(full)  # type: ignore[arg-type]
        fn(module)
    finally:
        own.update(kept)
    return full


@torch.no_grad()
def initialise_sharded(model: GPT) -> None:
    """Give a sharded model exactly the weights GPT(config) makes on one process.

    GPT(config) draws from the global RNG twice over: each layer's constructor initialises
    its parameters (nn.Linear's reset_parameters, ...), then GPT._init_weights overwrites them
    in nn.Module.apply's order. Both passes are replayed here on full-size CPU tensors, one
    module at a time, so the RNG advances exactly as on one process; the first pass's values
    are thrown away, and after the second each rank copies its shard. The tied lm_head shares
    wte's parameter, initialised once through wte, as in GPT's init.
    """
    from torch.distributed.tensor import distribute_tensor

    for module in model.modules():  # registration order = construction order
        if hasattr(module, "reset_parameters"):
            on_full_parameters(module, lambda m: m.reset_parameters(), module._parameters)
    done: set[int] = set()
    for module in apply_order(model):
        params = {n: p for n, p in module.named_parameters(recurse=False) if id(p) not in done}
        if not params:
            continue
        full = on_full_parameters(module, model._init_weights, params)
        for name, p in params.items():
            # src_data_rank=None: every rank drew the same full tensor, no broadcast needed
            shard = distribute_tensor(
                full[name].to(p.device), p.device_mesh, p.placements, src_data_rank=None
            )
            p.to_local().copy_(shard.to_local())
            done.add(id(p))


def empty_model(config: GPTConfig, device: torch.device) -> GPT:
    """A GPT with uninitialised weights on `device` (no time or RNG spent on an initialisation
    that will be overwritten), its lm_head tied to wte as GPT's constructor ties them."""
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)  # new tensors per module: the tie is undone...
    model.lm_head.weight = model.transformer.wte.weight  # ...and made again
    return model


def load_sharded_weights(model: GPT, path: Path) -> None:
    """Load a checkpoint's weights into a sharded model: read and checked on CPU as for one
    process (ckpt.load_weights), then each rank keeps its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    full = empty_model(model.config, torch.device("cpu"))
    ckpt.load_weights(full, path)
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, full.state_dict(), options=options)


def wrap_model(model: GPT, cfg: TrainConfig, env: DistEnv) -> nn.Module:
    """FSDP2 (per block, then the root) or DDP across ranks, and torch.compile if asked.

    FSDP2: each block is compiled in place (module.compile() keeps parameter names) and then
    sharded; on CUDA in bfloat16 the blocks compute with bf16 copies of the parameters and
    reduce gradients in float32 (CPU/gloo runs stay float32). DDP: the DDP-wrapped module is
    compiled, not the other way round, so that Dynamo sees DDP and its DDPOptimizer splits
    the graph at DDP's gradient-bucket boundaries: each bucket's all-reduce then starts while
    the backward of earlier layers still runs (a compiled module inside DDP would hand DDP all
    its gradients at once, at the end of one backward graph).
    """
    compile_on = cfg.compile if cfg.compile is not None else env.device.type == "cuda"
    if cfg.fsdp:
        if not env.distributed:
            raise UserError("--fsdp needs several processes: launch with torchrun")
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy()
        if env.device.type == "cuda" and autocast_dtype(cfg, env.device) == torch.bfloat16:
            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in model.transformer.h:
            if compile_on:
                block.compile()
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model
    wrapped: nn.Module = model
    if env.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [env.device.index] if env.device.type == "cuda" else None
        wrapped = DDP(model, device_ids=ids)
    return torch.compile(wrapped) if compile_on else wrapped


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU batch on `device`. For CUDA it is first copied to page-locked (pinned) memory, so
    that the host-to-device copy runs asynchronously (non_blocking) behind the queued work."""
    if device.type == "cuda":
        batch = batch.pin_memory()
    return batch.to(device, non_blocking=True)


def make_val_loader(
    cfg: TrainConfig, env: DistEnv, manifest: dict[str, Any], tok: Tokeniser
) -> tuple[DataLoader | None, int]:
    """The deterministic validation loader and its number of batches per evaluation
    (val_tokens, capped by the split), or (None, 0) when the data has no val split."""
    available = split_tokens(manifest, "val")
    per_step = cfg.batch_size * cfg.seq_len * env.world_size
    if available == 0:
        return None, 0
    loader = DataLoader(
        cfg.data,
        batch_size=cfg.batch_size,
        seq_len=cfg.seq_len,
        split="val",
        rank=env.rank,
        world_size=env.world_size,
        seed=cfg.seed,
        fingerprint=tok.fingerprint,
    )
    # The last batch needs one token beyond it (its final target); never wrap around.
    budget = min(cfg.val_tokens, loader.tokens_in_split - 1)
    return loader, max(1, budget // per_step)


def restore(run: Run, state: ckpt.TrainingState, path: Path) -> None:
    """Put the optimizer, loader, RNG and counters back where the checkpoint left them."""
    if run.cfg.fsdp and state.optimizer:  # empty: saved before the first step
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(
            run.model,
            run.optimizer,
            optim_state_dict=state.optimizer,
            options=StateDictOptions(full_state_dict=True),
        )
    elif not run.cfg.fsdp:
        try:
            run.optimizer.load_state_dict(state.optimizer)
        except (ValueError, KeyError) as e:  # torch's words for "these groups do not fit"
            raise ckpt.CheckpointError(
                f"{path / ckpt.OPTIMIZER_FILE}: does not fit this model's optimizer ({e})"
            ) from None
    apply_optimizer_settings(run.optimizer, run.cfg)
    run.train_loader.load_state_dict(state.loader[run.env.rank])
    ckpt.restore_rng_state(state.rng[run.env.rank], run.device)
    run.step = state.step
    run.tokens = state.tokens
    run.best_val_loss = state.best_val_loss
    run.best_checkpoint = ckpt.best_checkpoint(run.run_dir)
    run.last_checkpoint = path
    run.resumed = True
    run.log.print(f"resumed from {path} at step {state.step} ({state.tokens:,} tokens)")


def load_hellaswag(run: Run) -> list[dict[str, Any]] | None:
    """The HellaSwag examples to score during training, or None (one log line says why).

    Rank 0 alone finds (or downloads) and reads the file, and every rank receives its examples,
    or its error, by broadcast: all ranks take the same path whatever files their node holds, so
    they reach the same collectives, and a node without the file still scores its share."""
    if run.cfg.hellaswag == "off":
        return None
    return distributed.decide_on_rank0(lambda: read_hellaswag(run))


def read_hellaswag(run: Run) -> list[dict[str, Any]] | None:
    """Rank 0's side of `load_hellaswag`: the examples, or None with one log line."""
    from gpt.hellaswag.score import find_hellaswag_file, load_examples

    auto = run.cfg.hellaswag == "auto"
    path = find_hellaswag_file(None if auto else run.cfg.hellaswag)
    if path is None and auto:
        path = download_hellaswag(run)
    elif path is None:
        run.log.print(f"hellaswag: skipped, no file {run.cfg.hellaswag}; pass --hellaswag FILE")
    return None if path is None else load_examples(path, limit=run.cfg.hellaswag_limit)


def download_hellaswag(run: Run) -> Path | None:
    """The val split downloaded once into the cache (atomically), or None with one log line when
    that fails (offline, or the cache cannot be written): the run goes on without HellaSwag."""
    from gpt.hellaswag.score import download_split

    try:
        path = download_split("val")
    except (UserError, OSError) as e:
        run.log.print(f"hellaswag: skipped ({e}); pass --hellaswag FILE or set HELLASWAG_FILE")
        return None
    run.log.print(f"hellaswag: downloaded the val split to {path}")
    return path


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
        "dtype": str(run.dtype).removeprefix("torch."),
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


# ----------------------------------------------------------------------------- the loop


def loop(run: Run) -> None:
    """Steps run.step .. max_steps - 1; evaluation and checkpoints at the top of a step."""
    run.log.start_progress(run.max_steps, run.step, run.cfg.progress)
    first = run.step
    for step in range(first, run.max_steps + 1):
        run.step = step
        done_here = run.resumed and step == first  # evaluated and saved before the checkpoint
        last = step == run.max_steps
        saved = False
        if not done_here and (step % run.cfg.eval_every == 0 or last):
            saved = evaluate(run)
        periodic = run.cfg.save_every and step % run.cfg.save_every == 0 and step > 0
        if not done_here and not saved and (periodic or last):
            save(run, best=False)
        if last:
            break
        train_step(run)
        run.log.advance()


@contextmanager
def grad_sync(run: Run, sync: bool) -> Iterator[None]:
    """Synchronise gradients across ranks only when `sync` (the last micro-step)."""
    if run.cfg.fsdp:
        run.model.set_requires_gradient_sync(sync)  # type: ignore[operator]
        yield
    elif run.env.distributed and not sync:
        with run.train_model.no_sync():  # type: ignore[operator]
            yield
    else:
        yield


def train_step(run: Run) -> None:
    """One optimizer step: accum micro-batches, loss averaged over them and the ranks."""
    cfg, device, step = run.cfg, run.device, run.step
    start = time.perf_counter()
    run.train_model.train()
    loss_sum = torch.zeros((), device=device)
    for micro in range(run.accum):
        x, y = run.train_loader.next_batch()  # (B, T) int64 each
        x, y = to_device(x, device), to_device(y, device)
        with grad_sync(run, micro == run.accum - 1), autocast(device, run.dtype):
            _, loss = run.train_model(x, y)
        loss = loss / run.accum
        loss_sum += loss.detach()
        loss.backward()
    distributed.all_reduce_mean(loss_sum)
    loss_value = loss_sum.item()
    check_finite(run, "loss", loss_value)
    norm = clip_grad_norm(run)
    check_finite(run, "gradient norm", norm)
    lr = lr_at(step, cfg, run.max_steps)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    if not run.cfg.fsdp:
        # Fused AdamW updates parameters in place without bumping their version counters;
        # caches keyed on them (GPT.generate's decoding weights) must see the new values.
        torch.autograd.graph.increment_version(list(run.model.parameters()))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = time.perf_counter() - start
    run.tokens += cfg.total_batch_size
    log_step(run, loss_value, lr, norm, dt)


def clip_grad_norm(run: Run) -> float:
    """The global gradient norm (before clipping), clipping to grad_clip when it is > 0."""
    max_norm = run.cfg.grad_clip if run.cfg.grad_clip > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), max_norm)
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP
        norm = norm.full_tensor()
    return float(norm)


def check_finite(run: Run, what: str, value: float) -> None:
    if math.isfinite(value):
        return
    where = run.last_checkpoint or "none was written"
    raise NonFiniteLossError(
        f"non-finite {what} ({value}) at step {run.step}: training stopped. Last good "
        f"checkpoint: {where}; resume from it with --resume and a lower --max-lr"
    )


def log_step(run: Run, loss: float, lr: float, norm: float, dt: float) -> None:
    tok_s = run.cfg.total_batch_size / dt
    mfu = run.flops_per_token * tok_s / (run.peak * run.env.world_size) if run.peak else None
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


@contextmanager
def eval_model(run: Run) -> Iterator[GPT]:
    """An uncompiled, unwrapped model for evaluation: the module itself, or under FSDP a full
    copy gathered on every rank (so that each rank can run its own share)."""
    if not run.cfg.fsdp:
        run.model.eval()
        yield run.model
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(run.model, options=StateDictOptions(full_state_dict=True))
    copy = empty_model(run.model_config, run.device)
    copy.load_state_dict(state)
    copy.eval()
    yield copy
    del copy, state


def refine_peak(run: Run) -> None:
    """On CPU, keep the best matmul rate seen so far as the peak: other processes sharing the
    cores make any single measurement low (and MFU too high)."""
    if run.cfg.peak_flops is None and run.device.type == "cpu" and run.peak is not None:
        run.peak = max(run.peak, measure_matmul_flops(run.device, seconds=0.2))


def evaluate(run: Run) -> bool:
    """Validation loss, HellaSwag and samples at the top of run.step; save a checkpoint when the
    validation loss is a new best. Returns whether a checkpoint was saved."""
    tokens = run.tokens_at(run.step)
    refine_peak(run)
    saved = False
    with eval_model(run) as model, torch.no_grad():
        if run.val_loader is not None:
            val = validation_loss(run, model)
            run.last_val_loss = val
            run.log.event(run.step, tokens, "val", val)
            run.log.print(f"step {run.step:6d} | val loss {val:.4f}")
        if run.hellaswag is not None:
            hellaswag(run, model, tokens)
        if run.cfg.samples and run.env.is_main:
            sample(run, model, tokens)
    val = run.last_val_loss
    if val is not None and (run.best_val_loss is None or val < run.best_val_loss):
        run.best_val_loss = val
        save(run, best=True)
        saved = True
    return saved


def validation_loss(run: Run, model: GPT) -> float:
    """Mean loss over val_steps batches of the validation split, from its start, over ranks."""
    assert run.val_loader is not None
    run.val_loader.reset()
    total = torch.zeros((), device=run.device)
    for _ in range(run.val_steps):
        x, y = run.val_loader.next_batch()
        x, y = x.to(run.device), y.to(run.device)
        with autocast(run.device, run.dtype):
            _, loss = model(x, y)
        total += loss.detach().float()
    total /= run.val_steps
    distributed.all_reduce_mean(total)
    return total.item()


def hellaswag(run: Run, model: GPT, tokens: int) -> None:
    """HellaSwag accuracy of the current model, its examples spread over the ranks."""
    from gpt.hellaswag.score import evaluate as hellaswag_evaluate

    assert run.hellaswag is not None
    with autocast(run.device, run.dtype):
        result = hellaswag_evaluate(
            model,
            run.tokeniser,
            run.hellaswag,
            device=run.device,
            rank=run.env.rank,
            world_size=run.env.world_size,
        )
    run.log.event(
        run.step,
        tokens,
        "hella",
        float(result["acc_norm"]),
        acc=result["acc"],
        acc_norm_bytes=result["acc_norm_bytes"],
        n=result["n"],
        cut=result["cut"],
    )
    # Items longer than the model's context are scored cut from the left (gpt.hellaswag.fit_context)
    cut = f" ({result['cut']} of {result['n']} cut to fit the context)" if result["cut"] else ""
    run.log.print(f"step {run.step:6d} | hellaswag acc_norm {result['acc_norm']:.4f}{cut}")


def sample(run: Run, model: GPT, tokens: int) -> None:
    """A few continuations of the sample prompt (rank 0), into the logs. The prompt follows an
    end-of-text token, as every training document does."""
    cfg, tok = run.cfg, run.tokeniser
    prompt = [tok.eot_token, *tok.encode(cfg.sample_prompt)]
    idx = torch.tensor([prompt] * cfg.samples, dtype=torch.long, device=run.device)
    generator = torch.Generator(device=run.device).manual_seed(cfg.sample_seed)
    with autocast(run.device, run.dtype):
        out = model.generate(
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
    """Checkpoint the state after run.step steps (every rank takes part; rank 0 writes)."""
    path = ckpt.step_dir(run.run_dir, run.step)
    model_state, optim_state = gather_states(run)
    loaders = distributed.all_gather_objects(run.train_loader.state_dict())
    rngs = distributed.all_gather_objects(ckpt.capture_rng_state(run.device))
    if run.env.is_main:
        state = ckpt.TrainingState(
            step=run.step,
            tokens=run.tokens,
            best_val_loss=run.best_val_loss,
            world_size=run.env.world_size,
            train_config=run.cfg.to_dict(),
            optimizer=optim_state,
            loader=loaders,
            rng=[_cpu(r) for r in rngs],
        )
        ckpt.save_checkpoint(
            path,
            model_state,
            run.model_config,
            state,
            run.tokeniser.spec,
            run.tokeniser.fingerprint,
        )
        if best:
            ckpt.mark_best(run.run_dir, path)
        ckpt.prune_checkpoints(run.run_dir, run.cfg.keep)
        if best and run.best_val_loss is not None:
            tokens = run.tokens_at(run.step)
            run.log.event(run.step, tokens, "ckpt", run.best_val_loss, path=str(path))
        run.log.print(f"step {run.step:6d} | saved {path}{' (best)' if best else ''}")
    distributed.barrier()
    run.last_checkpoint = path
    if best:
        run.best_checkpoint = path
    return path


def gather_states(run: Run) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Full (unsharded, CPU) model and optimizer states; complete on rank 0."""
    if run.cfg.fsdp:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(run.model, options=options)
        # Before the first step there is no state, and get_optimizer_state_dict would create it
        # by taking a zero-gradient step (advancing AdamW's step count): save none instead.
        optim_state: dict[str, Any] = {}
        if run.optimizer.state:
            optim_state = get_optimizer_state_dict(run.model, run.optimizer, options=options)
        model_state = {k: v.contiguous() for k, v in model_state.items() if k != "lm_head.weight"}
        return model_state, optim_state
    if not run.env.is_main:
        return {}, {}
    return ckpt.model_state_for_saving(run.model), run.optimizer.state_dict()


def _cpu(rng: dict[str, Any]) -> dict[str, Any]:
    """RNG states gathered from another rank, as CPU tensors."""
    return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in rng.items()}


# ----------------------------------------------------------------------------- the end


def finish(run: Run) -> TrainResult:
    """Export the best checkpoint as a Hugging Face directory and plot the run (rank 0)."""
    best = run.best_checkpoint or ckpt.latest_checkpoint(run.run_dir)
    result = TrainResult(
        run_dir=run.run_dir,
        steps=run.max_steps,
        tokens=run.tokens,
        final_val_loss=run.last_val_loss,
        best_val_loss=run.best_val_loss,
        best_checkpoint=best,
    )
    if run.env.is_main:
        if run.cfg.export and best is not None:
            result.export_dir = export(best, run.run_dir / "export", run.tokeniser)
            run.log.print(f"exported {best} as a Hugging Face model in {result.export_dir}")
        if run.cfg.plot:
            result.plots = plot(run)
    distributed.barrier()
    return result


def export(checkpoint: Path, out_dir: Path, tokeniser: Tokeniser) -> Path:
    """A checkpoint as a Hugging Face model directory (gpt/hf.py)."""
    model, _ = ckpt.load_model_dir(checkpoint)
    return Path(model.save_pretrained(out_dir, tokeniser=tokeniser))


def plot(run: Run) -> list[Path]:
    """The run's curves in RUN/plots (gpt/plot.py); skipped with a line without matplotlib."""
    try:
        from gpt.plot import plot_runs
    except ImportError as e:
        run.log.print(f"plots: skipped ({e})")
        return []
    paths = plot_runs([run.run_dir], run.run_dir / "plots")
    run.log.print(f"plots: {', '.join(str(p) for p in paths)}")
    return paths
