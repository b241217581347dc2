"""`--batch-size auto`: the largest micro-batch that fits the device's memory, chosen once when a
new run starts.

    python train.py --batch-size auto     # header: "batch size auto: 32 sequences a micro-batch"

The candidates are the micro-batch sizes that split total_batch_size exactly over the ranks
(recipe.micro_batch_sizes), so the tokens of an optimizer step stay the recipe's and only the
gradient accumulation changes. How a size is found to fit depends on the device:

    cuda      tried: one forward and backward of the run's model (its shape and autocast dtype,
              eager) at a micro-batch, with its gradients and the optimizer's state held beside
              it and the allocator capped at PROBE_MEMORY_FRACTION of the device. The largest
              candidate first; after a torch.OutOfMemoryError the largest candidate at most half
              as large. The cap leaves room for what the eager probe does not see: a compiled
              step's own buffers (GPT-2 124M's compiled step peaked at 1.23x its eager one on an
              H200, BENCHMARKS.md), cuBLAS and NCCL workspaces, fragmentation.
    cpu, mps  running out of memory there is the operating system ending the process, not an
              exception to catch, so the size comes from a budget: CPU_MEMORY_FRACTION of the
              memory available now (shared by the ranks of a node) must hold the weights, their
              gradients and the optimizer's state, and the activations, measured (the tensors a
              forward saves for its backward, at 1 and 2 sequences). The largest candidate within
              the budget.

Every rank chooses alone (no collective runs while a rank may fail), and the run takes the
smallest choice. The choice is printed in the run's header and is the run's batch_size from then
on: RUN/config.json and every checkpoint hold the number, so `--out RUN --resume` continues with
it without probing again (and, batch_size fixing the data order, refuses a stated `auto`).
"""

from __future__ import annotations

import dataclasses
import gc
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from gpt import distributed
from gpt.cli import UserError
from gpt.config import AUTO_BATCH, GPTConfig, TrainConfig
from gpt.distributed import DistEnv
from gpt.fsio import human_size
from gpt.model.base import LanguageModel
from gpt.train.parallel import autocast, autocast_dtype, empty_model
from gpt.train.recipe import grad_accum_steps, micro_batch_sizes

PROBED_DEVICES = ("cuda",)
"""Devices whose out-of-memory is an exception, so that sizes can be tried."""
PROBE_MEMORY_FRACTION = 0.8
"""The share of a GPU's memory a probed micro-step may use (see the module doc)."""
CPU_MEMORY_FRACTION = 0.5
"""The share of the available memory a CPU run's estimate may fill: the estimate leaves out the
backward's transient activation gradients and the allocator's own use."""
ADAMW_MOMENTS = 2
"""Parameter-sized optimizer buffers per parameter (AdamW's two moments; Muon keeps one)."""


@dataclasses.dataclass(frozen=True)
class Tried:
    """One probed micro-batch size and whether its forward and backward fitted."""

    size: int
    fits: bool

    def __str__(self) -> str:
        return f"{self.size} {'fits' if self.fits else 'out of memory'}"


def resolve_batch_size(
    cfg: TrainConfig, model_config: GPTConfig, env: DistEnv
) -> tuple[TrainConfig, str | None]:
    """`cfg` with a number for batch_size, and the header line saying how it was chosen: `cfg`
    and None unless its batch_size is auto; else the largest candidate that fits this device
    (every rank's smallest, so all ranks agree), e.g. "batch size auto: 32 sequences a
    micro-batch x 8 micro-steps (cuda, tried: 256 out of memory, 128 out of memory, 64 out of
    memory, 32 fits)"."""
    if cfg.batch_size != AUTO_BATCH:
        return cfg, None
    candidates = micro_batch_sizes(cfg, env.world_size)
    dtype = autocast_dtype(cfg, env.device)
    model = probe_model(model_config, env.device)
    copies = optimizer_copies(cfg, env)
    if env.device.type in PROBED_DEVICES:
        size, how = probe(model, candidates, cfg.seq_len, dtype, copies)
    else:
        size, how = budget(model, candidates, cfg.seq_len, dtype, copies)
    del model
    release_memory(env.device)
    size = min(distributed.all_gather_objects(size))
    chosen = dataclasses.replace(cfg, batch_size=size)
    accum = grad_accum_steps(chosen, env.world_size)
    steps = f"{accum} micro-step{'s' if accum > 1 else ''}"
    return chosen, f"batch size auto: {size} sequences a micro-batch x {steps} ({how})"


def optimizer_copies(cfg: TrainConfig, env: DistEnv) -> int:
    """Parameter-sized buffers a run holds besides the weights and their gradients: AdamW's
    moments, and DDP's gradient buckets. None under FSDP, whose sharded weights, gradients and
    state (4 copies / world size per rank) are at most the probe's unsharded weights and
    gradients."""
    if cfg.fsdp:
        return 0
    return ADAMW_MOMENTS + (1 if env.distributed else 0)


def probe_model(config: GPTConfig, device: torch.device) -> LanguageModel:
    """A model of the run's shape on `device`, weights zero (memory does not depend on them; no
    random number is drawn, so the run's initialisation is untouched)."""
    model = empty_model(config, device)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model.train()


# ----------------------------------------------------------------------------- GPUs: trying


def probe(
    model: LanguageModel, candidates: list[int], seq_len: int, dtype: torch.dtype, copies: int
) -> tuple[int, str]:
    """The largest candidate whose forward and backward fit (see `largest_fitting`), with the
    model's gradients and `copies` parameter-sized optimizer buffers held, under the memory cap."""
    device = next(model.parameters()).device
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # held from the second micro-step on
    held = [torch.empty_like(p) for p in model.parameters() for _ in range(copies)]
    with capped_memory(device):
        size, tried = largest_fitting(
            candidates, lambda rows: micro_step_fits(model, rows, seq_len, dtype)
        )
    del held
    model.zero_grad(set_to_none=True)
    cap = f"within {PROBE_MEMORY_FRACTION:.0%} of its memory"
    return size, f"{device.type}, {cap}, tried: {', '.join(map(str, tried))}"


def largest_fitting(candidates: list[int], fits: Callable[[int], bool]) -> tuple[int, list[Tried]]:
    """The largest of `candidates` (ascending) for which fits(size) holds, trying the largest
    first and, after one that does not fit, the largest at most half of it; and what was tried.

    12 rows a step on a device where 5 fit: 12 does not, then 6 (the largest <= 6) does not,
    then 3 does:

        >>> size, tried = largest_fitting([1, 2, 3, 4, 6, 12], lambda rows: rows <= 5)
        >>> size, [str(t) for t in tried]
        (3, ['12 out of memory', '6 out of memory', '3 fits'])
    """
    tried: list[Tried] = []
    size = candidates[-1]
    while True:
        ok = fits(size)
        tried.append(Tried(size, ok))
        if ok:
            return size, tried
        smaller = [c for c in candidates if c <= size // 2]
        if not smaller:
            raise UserError(
                "--batch-size auto: not even one sequence fits in the device's memory "
                f"({', '.join(map(str, tried))}); lower --seq-len, use --fsdp over several "
                "GPUs, or choose a smaller model"
            )
        size = smaller[-1]


def micro_step_fits(model: nn.Module, rows: int, seq_len: int, dtype: torch.dtype) -> bool:
    """Whether one forward and backward of `rows` sequences runs without running out of memory;
    the memory it took is given back either way (the gradients stay allocated)."""
    try:
        forward_backward(model, rows, seq_len, dtype)
        fits = True
    except torch.OutOfMemoryError:
        fits = False  # the exception and its frames are gone before the memory is released
    release_memory(next(model.parameters()).device)
    return fits


def forward_backward(model: nn.Module, rows: int, seq_len: int, dtype: torch.dtype) -> None:
    """One training micro-step's forward and backward on `rows` sequences of token 0 (the
    memory a step takes does not depend on the ids)."""
    device = next(model.parameters()).device
    idx = torch.zeros(rows, seq_len, dtype=torch.long, device=device)  # (B, T)
    with autocast(device, dtype):
        _, loss = model(idx, idx)
    loss.backward()


@contextmanager
def capped_memory(device: torch.device) -> Iterator[None]:
    """CUDA's allocator limited to PROBE_MEMORY_FRACTION of the device, then the whole again
    (no cap elsewhere: only CUDA's allocator takes one)."""
    if device.type != "cuda":
        yield
        return
    torch.cuda.set_per_process_memory_fraction(PROBE_MEMORY_FRACTION, device)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)


def release_memory(device: torch.device) -> None:
    """Hand freed blocks back to the device, so that the run starts from an empty cache."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- CPUs: a budget


def budget(
    model: LanguageModel, candidates: list[int], seq_len: int, dtype: torch.dtype, copies: int
) -> tuple[int, str]:
    """The largest candidate whose estimated memory (weights, gradients, `copies` optimizer
    buffers, and the activations `activation_bytes` measures) is within CPU_MEMORY_FRACTION of
    the memory available to each rank of this node."""
    per_row, fixed = activation_bytes(model, seq_len, dtype)
    weights = sum(p.nbytes for p in model.parameters())
    base = weights * (2 + copies) + fixed  # weights, gradients, optimizer buffers
    available = available_memory() // ranks_on_this_node()
    allowed = CPU_MEMORY_FRACTION * available
    fitting = [size for size in candidates if base + size * per_row <= allowed]
    how = (
        f"{next(model.parameters()).device.type}: {human_size(per_row)} of activations a sequence "
        f"(measured) besides {human_size(base)} of weights, gradients and optimizer state, within "
        f"{CPU_MEMORY_FRACTION:.0%} of {human_size(available)} available"
    )
    if not fitting:
        raise UserError(
            f"--batch-size auto: not even one sequence fits in memory ({how}); lower --seq-len "
            "or choose a smaller model"
        )
    return fitting[-1], how


def activation_bytes(model: nn.Module, seq_len: int, dtype: torch.dtype) -> tuple[int, int]:
    """(bytes a sequence adds, bytes independent of the batch) of what a forward keeps for its
    backward, from the forwards of 1 and 2 sequences (no backward is run)."""
    one, two = (saved_bytes(model, rows, seq_len, dtype) for rows in (1, 2))
    return two - one, max(0, 2 * one - two)


def saved_bytes(model: nn.Module, rows: int, seq_len: int, dtype: torch.dtype) -> int:
    """Bytes of the tensors a forward of `rows` sequences saves for its backward: each storage
    once (views share one), the parameters' own left out (they are the weights)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t  # kept by the graph until the forward's result is dropped

    device = next(model.parameters()).device
    idx = torch.zeros(rows, seq_len, dtype=torch.long, device=device)  # (B, T)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(device, dtype):
        model(idx, idx)
    return sum(saved.values())


def available_memory() -> int:
    """Bytes this process may still allocate: Linux's MemAvailable, within a cgroup's (a
    container's) limit; elsewhere the physical memory."""
    meminfo = Path("/proc/meminfo")
    text = meminfo.read_text() if meminfo.is_file() else ""
    found = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.MULTILINE)
    if found is None:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return min(int(found.group(1)) * 1024, cgroup_room())


def cgroup_room() -> int:
    """What a cgroup v2 memory limit leaves (limit - usage); unlimited: a huge number."""
    limit, usage = Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")
    try:
        text = limit.read_text().strip()
        if text != "max":
            return int(text) - int(usage.read_text())
    except (OSError, ValueError):
        pass
    return 2**62


def ranks_on_this_node() -> int:
    """Processes of the run sharing this machine's memory (torchrun's LOCAL_WORLD_SIZE)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
