"""How a run spreads over devices: the only module that knows DDP, FSDP2, torch.compile and
autocast. The model module knows none of them; the loop asks a `Parallel`, built once per run by
`make_parallel`, and never branches on the strategy itself.

    Replicated   one process, or DDP across ranks (every rank holds the whole model; gradients
                 are all-reduced on the last micro-step); torch.compile of the DDP-wrapped module
    Sharded      FSDP2 (--fsdp, under torchrun): each block, then the root, sharded over the
                 ranks; built on the meta device and given memory and weights only once
                 sharded, so that no device ever holds the whole model; each block compiled alone

Both hand out an unwrapped, uncompiled model for evaluation (under FSDP a gathered full copy),
so compilation can never break validation, HellaSwag or sampling, and gather full CPU states
(weights without the tied lm_head alias, the optimizer's) for checkpoints.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import distribute_tensor
from torch.nn.parallel import DistributedDataParallel

from gpt.capability import native_bfloat16
from gpt.checkpoint import CheckpointError, load_weights, model_state_for_saving
from gpt.cli import UserError
from gpt.config import GPTConfig, TrainConfig
from gpt.distributed import DistEnv
from gpt.model.base import LanguageModel
from gpt.model.families import build_model
from gpt.train.optimizers import Optimizer, torch_optimizers
from gpt.train.recipe import configure_optimizer

ModelState = dict[str, torch.Tensor]
OptimizerState = dict[str, Any]


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    """By default bfloat16 on a GPU that multiplies it natively (Ampere and newer) and float32
    elsewhere, or as asked. CPUs train in float32 even where they multiply bfloat16 natively: a
    CPU run is a demo or a test, whose losses should not depend on the machine it ran on."""
    if cfg.dtype == "auto":
        native = device.type == "cuda" and native_bfloat16(device)
        return torch.bfloat16 if native else torch.float32
    return torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32


def autocast(device: torch.device, dtype: torch.dtype) -> AbstractContextManager[Any]:
    """Mixed precision for the forward pass; nothing for float32."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU batch on `device`. For CUDA it is first copied to page-locked (pinned) memory, so
    that the host-to-device copy runs asynchronously (non_blocking) behind the queued work."""
    if device.type == "cuda":
        batch = batch.pin_memory()
    return batch.to(device, non_blocking=True)


def make_parallel(cfg: TrainConfig, env: DistEnv) -> Parallel:
    """The run's strategy: Sharded for --fsdp (which needs several processes), else Replicated.
    On CUDA, float32 matmuls may use TF32 from here on."""
    if cfg.fsdp and not env.distributed:
        raise UserError("--fsdp needs several processes: launch with torchrun")
    if env.device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    if cfg.deterministic:
        deterministic_kernels()
    strategy = Sharded if cfg.fsdp else Replicated
    return strategy(env, autocast_dtype(cfg, env.device), compile_on(cfg, env))


def deterministic_kernels() -> None:
    """Only deterministic kernels in this process from here on: PyTorch's deterministic
    variants (and an error from an op that has none), Inductor without autotuning, cuBLAS with a
    fixed workspace, and attention by FlashAttention (whose backward has a deterministic mode,
    which this turns on) rather than cuDNN."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cuda.enable_cudnn_sdp(False)


def compile_on(cfg: TrainConfig, env: DistEnv) -> bool:
    """--compile as given, by default on CUDA only."""
    return cfg.compile if cfg.compile is not None else env.device.type == "cuda"


class Parallel(ABC):
    """What a strategy does for the loop; the methods that differ are the subclasses'."""

    def __init__(self, env: DistEnv, dtype: torch.dtype, compile: bool) -> None:
        self.env = env
        self.device = env.device
        self.dtype = dtype
        """The autocast dtype of forward passes (float32: none)."""
        self.compile = compile

    def autocast(self) -> AbstractContextManager[Any]:
        """The run's mixed precision, for training and evaluation forwards alike."""
        return autocast(self.device, self.dtype)

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        return to_device(batch, self.device)

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> float:
        """The global gradient norm (before clipping), clipping to max_norm."""
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        if hasattr(norm, "full_tensor"):  # a DTensor under FSDP: the norm over all shards
            norm = norm.full_tensor()
        return float(norm)

    @abstractmethod
    def build_model(
        self, config: GPTConfig, weights: Path | None
    ) -> tuple[LanguageModel, nn.Module]:
        """The plain model on this rank's device, initialised (or loaded from the checkpoint
        `weights`), and what the training step calls (wrapped and/or compiled)."""

    @abstractmethod
    def optimizer(self, model: LanguageModel, cfg: TrainConfig) -> Optimizer:
        """The run's optimizer (recipe.configure_optimizer) over this rank's parameters."""

    @abstractmethod
    def grad_sync(
        self, model: LanguageModel, train_model: nn.Module, sync: bool
    ) -> AbstractContextManager[None]:
        """A context in which backward synchronises gradients across ranks only when `sync`
        (the last micro-step)."""

    @abstractmethod
    def eval_model(self, model: LanguageModel) -> AbstractContextManager[LanguageModel]:
        """An uncompiled, unwrapped model in eval mode, whole on every rank."""

    @abstractmethod
    def full_states(
        self, model: LanguageModel, optimizer: Optimizer
    ) -> tuple[ModelState, OptimizerState]:
        """Full (unsharded, CPU) model and optimizer states for a checkpoint; complete on rank 0
        (every rank must call it)."""

    @abstractmethod
    def load_optimizer_state(
        self, model: LanguageModel, optimizer: Optimizer, state: OptimizerState, file: Path
    ) -> None:
        """Put a full optimizer state (as `full_states` gathers it, read from the checkpoint
        file `file`) into this rank's optimizer."""


class Replicated(Parallel):
    """One process, or DDP: each rank holds the whole model."""

    def build_model(
        self, config: GPTConfig, weights: Path | None
    ) -> tuple[LanguageModel, nn.Module]:
        model = build_model(config)
        if weights is not None:
            load_weights(model, weights)
        model.to(self.device)
        return model, self.wrap(model)

    def wrap(self, model: LanguageModel) -> nn.Module:
        """DDP across ranks, then torch.compile if asked. The DDP-wrapped module is compiled, not
        the other way round, so that Dynamo sees DDP and its DDPOptimizer splits the graph at
        DDP's gradient-bucket boundaries: each bucket's all-reduce then starts while the backward
        of earlier layers still runs (a compiled module inside DDP would hand DDP all its
        gradients at once, at the end of one backward graph)."""
        wrapped: nn.Module = model
        if self.env.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = DistributedDataParallel(model, device_ids=ids)
        return torch.compile(wrapped) if self.compile else wrapped

    def optimizer(self, model: LanguageModel, cfg: TrainConfig) -> Optimizer:
        return configure_optimizer(model, cfg, self.device)

    @contextmanager
    def grad_sync(self, model: LanguageModel, train_model: nn.Module, sync: bool) -> Iterator[None]:
        if self.env.distributed and not sync:
            with train_model.no_sync():  # type: ignore[operator]
                yield
        else:
            yield

    @contextmanager
    def eval_model(self, model: LanguageModel) -> Iterator[LanguageModel]:
        model.eval()
        yield model

    def full_states(
        self, model: LanguageModel, optimizer: Optimizer
    ) -> tuple[ModelState, OptimizerState]:
        if not self.env.is_main:
            return {}, {}
        return model_state_for_saving(model), optimizer.state_dict()

    def load_optimizer_state(
        self, model: LanguageModel, optimizer: Optimizer, state: OptimizerState, file: Path
    ) -> None:
        try:
            optimizer.load_state_dict(state)
        except (ValueError, KeyError) as e:  # torch's words for "these groups do not fit"
            raise CheckpointError(f"{file}: does not fit this model's optimizer ({e})") from None


class Sharded(Parallel):
    """FSDP2: parameters, gradients and optimizer states sharded over the ranks."""

    def build_model(
        self, config: GPTConfig, weights: Path | None
    ) -> tuple[LanguageModel, nn.Module]:
        """Built on the meta device, sharded, and only then given memory and weights: the
        model's own initialisation, parameter by parameter (`initialise_sharded`), or the
        checkpoint's weights, read whole into CPU memory first (`load_sharded_weights`)."""
        with torch.device("meta"):
            model = build_model(config)
        self.shard(model)
        model.to_empty(device=self.device)
        if weights is not None:
            load_sharded_weights(model, weights)
        else:
            initialise_sharded(model)
        return model, model

    def shard(self, model: LanguageModel) -> None:
        """FSDP2 per block, then the root; each block compiled in place first (module.compile()
        keeps parameter names). On CUDA in bfloat16 the blocks compute with bf16 copies of the
        parameters and reduce gradients in float32 (CPU/gloo runs stay float32)."""
        policy = MixedPrecisionPolicy()
        if self.device.type == "cuda" and self.dtype == torch.bfloat16:
            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in model.blocks:
            if self.compile:
                block.compile()
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)

    def optimizer(self, model: LanguageModel, cfg: TrainConfig) -> Optimizer:
        return configure_optimizer(model, cfg, self.device, fused=False)

    @contextmanager
    def grad_sync(self, model: LanguageModel, train_model: nn.Module, sync: bool) -> Iterator[None]:
        model.set_requires_gradient_sync(sync)  # type: ignore[operator]
        yield

    @contextmanager
    def eval_model(self, model: LanguageModel) -> Iterator[LanguageModel]:
        """A full copy gathered on every rank (so that each rank can run its own share)."""
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        copy = empty_model(model.config, self.device)
        copy.load_state_dict(state)
        copy.eval()
        yield copy
        del copy, state

    def full_states(
        self, model: LanguageModel, optimizer: Optimizer
    ) -> tuple[ModelState, OptimizerState]:
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(model, options=options)
        # Before the first step there is no state, and get_optimizer_state_dict would create it
        # by taking a zero-gradient step (advancing AdamW's step count): save none instead.
        optim_state: OptimizerState = {}
        parts = torch_optimizers(optimizer)
        if any(part.state for part in parts):
            optim_state = get_optimizer_state_dict(model, parts, options=options)
        alias = model.tied_alias
        model_state = {k: v.contiguous() for k, v in model_state.items() if k not in alias}
        return model_state, optim_state

    def load_optimizer_state(
        self, model: LanguageModel, optimizer: Optimizer, state: OptimizerState, file: Path
    ) -> None:
        if state:  # empty: saved before the first step
            options = StateDictOptions(full_state_dict=True)
            parts = torch_optimizers(optimizer)
            set_optimizer_state_dict(model, parts, optim_state_dict=state, options=options)


# ----------------------------------------------------------------------------- FSDP's weights


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
def initialise_sharded(model: LanguageModel) -> None:
    """Give a sharded model exactly the weights build_model(config) makes on one process.

    The constructor draws from the global RNG twice over: each layer's constructor initialises
    its parameters (nn.Linear's reset_parameters, ...), then the model's _init_weights
    overwrites them in nn.Module.apply's order. Both passes are replayed here on full-size CPU
    tensors, one module at a time, so the RNG advances exactly as on one process; the first
    pass's values are thrown away, and after the second each rank copies its shard. A tied
    lm_head shares the token embedding's parameter, initialised once through the embedding, as
    in the model's init.
    """
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


def empty_model(config: GPTConfig, device: torch.device) -> LanguageModel:
    """A model with uninitialised weights on `device` (no time or RNG spent on an initialisation
    that will be overwritten), its lm_head tied as the constructor ties it."""
    with torch.device("meta"):
        model = build_model(config)
    model.to_empty(device=device)  # new tensors per module: the tie is undone...
    model.tie_weights()  # ...and made again
    return model


def load_sharded_weights(model: LanguageModel, path: Path) -> None:
    """Load a checkpoint's weights into a sharded model: read and checked on CPU as for one
    process (gpt.checkpoint.load_weights), then each rank keeps its shard."""
    full = empty_model(model.config, torch.device("cpu"))
    load_weights(full, path)
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, full.state_dict(), options=options)
