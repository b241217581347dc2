"""Where a training step's time goes: torch.profiler's events of a few steps, put into one table
(the table of `python bench/gpu.py --profile`); and the optimizer's levers that bench/gpu.py
measures one at a time (`levers`).

    python bench/gpu.py --profile            # CUDA: the device's kernels, and its idle gaps
    python bench/gpu.py --smoke --profile    # CPU: the same table from the ops of the main thread

What is measured is the device's time on CUDA (each kernel's duration; the window from the first
kernel to the last) and the main thread's time on CPU (each op's own time, without its
children's; the window is the profiled steps). Each piece of work goes into one category:
first by the range it is or ran in (an optimizer's step, which torch.optim marks, or the data
loader, which bench/gpu.py marks as DATA_RANGE), then by its name or, failing that, the names of
the ops that launched it, innermost first (`categorise`). The head's matmuls are matmuls: the
loss row is cross-entropy's own softmax work. The time in no piece of work is idle: gaps of at
least HOST_GAP_US, where the device waited for the host (data, Python, a synchronisation), and
shorter ones between kernels (launch latency).
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from unittest import mock

import torch
from torch.autograd import DeviceType
from torch.autograd.profiler_util import FunctionEvent

from bench._common import table
from gpt.data.loader import DataLoader
from gpt.train import loop, optimizers, parallel, recipe

DATA_RANGE = "data: next_batch"
"""The name of the range bench/gpu.py opens around each read of a micro-batch."""
STEP_RANGE = "ProfilerStep"
"""The prefix of the ranges torch.profiler opens for each step (profile.step()): ProfilerStep#N,
named ProfilerStep* in its events."""
HOST_GAP_US = 20.0
"""A device gap at least this long (microseconds) is a wait for the host, not a launch gap."""
PROFILED_STEPS = 3
"""Steps recorded, after the one that warms the profiler up."""
NEWTON_SCHULZ = optimizers.newton_schulz
"""Muon's orthogonalisation as the package runs it (eager)."""

OTHER = "other elementwise and fused"
HOST_WAITS = "idle: waiting for the host (data, Python, sync)"
LAUNCH_GAPS = f"idle: gaps between kernels (< {HOST_GAP_US:.0f} us)"
# (category, pattern) in the order they are tried; searched in lower-cased names.
CONTEXTS = [
    ("optimizer: Muon (Newton-Schulz)", r"^optimizer\.step#muon\."),
    ("optimizer: AdamW, clipping", r"^optimizer\.(step|zero_grad)#"),
    ("data: loading, host-device copies", re.escape(DATA_RANGE)),
]
NAMES = [
    ("attention", r"flash|fmha|attention|sdpa|scaled_dot_product"),
    ("loss (cross-entropy)", r"nll_?loss|log_?softmax|cross_?entropy|logsumexp"),
    (
        "matmuls",
        r"gemm|nvjet|xmma|cutlass|cublas|matmul|aten::linear|(^|[^a-z])(add|b|baddb)?mm([^a-z]|$)",
    ),
    ("norms", r"layer_?norm|rms_?norm|rsqrt"),
    ("optimizer: AdamW, clipping", r"adam|multi_tensor_apply|_foreach_|clip_grad|vector_norm"),
    ("data: loading, host-device copies", r"memcpy|memset|pin_memory"),
]
ROWS = [
    "matmuls",
    "attention",
    "loss (cross-entropy)",
    "norms",
    OTHER,
    "optimizer: AdamW, clipping",
    "optimizer: Muon (Newton-Schulz)",
    "data: loading, host-device copies",
    HOST_WAITS,
    LAUNCH_GAPS,
]


@dataclass(frozen=True)
class Work:
    """A piece of measured work: a kernel (CUDA) or an op's own time (CPU)."""

    name: str
    us: float
    callers: tuple[str, ...] = ()
    """The ops and ranges it ran in, innermost first."""


@dataclass(frozen=True)
class Profile:
    """What the table is made of."""

    resource: str
    """What was measured, e.g. "cuda:0's kernels"."""
    work: list[Work]
    busy: list[tuple[float, float]]
    """The spans (start, end in us) in which the resource was busy, for the idle gaps."""
    window: tuple[float, float]
    steps: int
    data_us: float
    """The host's time in the data loader (DATA_RANGE), over the profiled steps."""


def categorise(work: Work) -> str:
    """The category of one piece of work (see the module doc).

    >>> categorise(Work("sm90_xmma_gemm_bf16bf16", 5.0, ("aten::mm",)))
    'matmuls'
    >>> categorise(Work("sm90_xmma_gemm_bf16bf16", 5.0, ("aten::mm", "Optimizer.step#Muon.step")))
    'optimizer: Muon (Newton-Schulz)'
    >>> categorise(Work("elementwise_kernel", 1.0, ("aten::mul", "aten::rms_norm")))
    'norms'
    """
    names = [work.name.lower(), *(c.lower() for c in work.callers)]
    for category, pattern in CONTEXTS:
        if any(re.search(pattern, name) for name in names):
            return category
    for name in names:
        for category, pattern in NAMES:
            if re.search(pattern, name):
                return category
    return OTHER


def gaps(busy: Iterable[tuple[float, float]], window: tuple[float, float]) -> list[float]:
    """The lengths of the stretches of `window` that no busy span covers.

    >>> gaps([(0, 2), (1, 3), (10, 11)], (0, 12))
    [7, 1]
    """
    found, reached = [], window[0]
    for start, end in sorted(busy):
        if start > reached:
            found.append(start - reached)
        reached = max(reached, end)
    if window[1] > reached:
        found.append(window[1] - reached)
    return found


def breakdown(profile: Profile) -> dict[str, float]:
    """Microseconds per category (ROWS), idle gaps included."""
    out = dict.fromkeys(ROWS, 0.0)
    for work in profile.work:
        out[categorise(work)] += work.us
    for gap in gaps(profile.busy, profile.window):
        out[HOST_WAITS if gap >= HOST_GAP_US else LAUNCH_GAPS] += gap
    return out


def largest(profile: Profile, category: str, n: int = 2) -> str:
    """The names of the category's n largest contributors, shortened."""
    totals: dict[str, float] = {}
    for work in profile.work:
        if categorise(work) == category:
            totals[work.name] = totals.get(work.name, 0.0) + work.us
    names = sorted(totals, key=totals.__getitem__, reverse=True)[:n]
    return ", ".join(short(name) for name in names)


def short(name: str, limit: int = 36) -> str:
    """A kernel's or op's name without its namespaces and template arguments, its middle cut
    to fit `limit` characters.

    >>> short("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::Foo>")
    'multi_tensor_apply_kernel<...>'
    >>> short("aten::_scaled_dot_product_flash_attention_for_cpu_backward")
    '_scaled_dot_prod..._for_cpu_backward'
    """
    plain = name.removeprefix("void ").replace("(anonymous namespace)::", "")
    base = plain.split("<")[0].split("(")[0].split("::")[-1] or name
    if "<" in name:
        base += "<...>"
    if len(base) <= limit:
        return base
    keep = (limit - 3) // 2
    return f"{base[:keep]}...{base[-(limit - 3 - keep) :]}"


def profile_table(profile: Profile) -> str:
    """The table, then a line on the window and the host's data loading."""
    times = breakdown(profile)
    window = profile.window[1] - profile.window[0]
    rows = [
        [row, f"{100 * us / window:.1f}%", f"{us / 1e3 / profile.steps:.2f}", largest(profile, row)]
        for row, us in times.items()
    ]
    head = ["where the time goes", "share", "ms a step", "largest"]
    note = (
        f"{profile.resource}, {profile.steps} steps of {window / 1e3 / profile.steps:.1f} ms; the "
        f"host spent {profile.data_us / 1e3 / profile.steps:.2f} ms a step in the data loader"
    )
    return f"{table(head, rows)}\n{note}"


# ----------------------------------------------------------------------------- from torch.profiler


def callers(event: FunctionEvent | None) -> tuple[str, ...]:
    """The names of `event` and the ranges around it, innermost first."""
    names = []
    while event is not None:
        names.append(event.name)
        event = event.cpu_parent
    return tuple(names)


def step_ranges(events: Sequence[FunctionEvent]) -> list[FunctionEvent]:
    """The profiled steps' ranges (on the thread that ran the loop)."""
    return [e for e in events if e.name.startswith(STEP_RANGE) and e.device_type == DeviceType.CPU]


def data_time(events: Sequence[FunctionEvent]) -> float:
    return sum(e.time_range.elapsed_us() for e in events if e.name == DATA_RANGE)


def device_profile(events: Sequence[FunctionEvent], device: str) -> Profile:
    """The kernels (and copies) a CUDA device ran, each named after itself and placed in the
    ops that launched it (its CPU op: linked by correlation id)."""
    launched_by = {
        e.id: e
        for e in events
        if e.device_type == DeviceType.CPU and not getattr(e, "linked_correlation_id", 0)
    }
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    work = [
        Work(k.name, k.time_range.elapsed_us(),
             callers(launched_by.get(getattr(k, "linked_correlation_id", 0))))
        for k in kernels
    ]  # fmt: skip
    busy = [(k.time_range.start, k.time_range.end) for k in kernels]
    window = (min(s for s, _ in busy), max(e for _, e in busy))
    steps = len(step_ranges(events))
    return Profile(f"{device}'s kernels", work, busy, window, steps, data_time(events))


def host_profile(events: Sequence[FunctionEvent]) -> Profile:
    """The ops of the thread that ran the steps, each for its own time (its children's left to
    them); busy while a step's outermost ops run."""
    steps = step_ranges(events)
    thread = steps[0].thread
    ops = [e for e in events if e.thread == thread and e.device_type == DeviceType.CPU
           and not e.name.startswith(STEP_RANGE) and in_steps(e)]  # fmt: skip
    work = [Work(e.name, e.self_cpu_time_total, callers(e.cpu_parent)) for e in ops]
    busy = [(e.time_range.start, e.time_range.end) for e in ops if outermost(e)]
    window = (min(s.time_range.start for s in steps), max(s.time_range.end for s in steps))
    return Profile("the CPU's main thread", work, busy, window, len(steps), data_time(events))


def in_steps(event: FunctionEvent) -> bool:
    """Whether `event` ran inside a profiled step's range."""
    return any(name.startswith(STEP_RANGE) for name in callers(event.cpu_parent))


def outermost(event: FunctionEvent) -> bool:
    """Whether `event` is directly inside a step's range."""
    parent = event.cpu_parent
    return parent is not None and parent.name.startswith(STEP_RANGE)


def profiled_events(
    train: Callable[[], Any], skip: int, device: torch.device
) -> list[FunctionEvent]:
    """Run `train()` (a run of at least skip + 1 + PROFILED_STEPS steps), recording steps
    skip + 1 .. skip + PROFILED_STEPS (step `skip` warms the profiler up). The loop's steps are
    told to the profiler by wrapping its train_step, and each read of a micro-batch is marked as
    DATA_RANGE: the loop has no hook for either, and a benchmark should not add one."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    schedule = torch.profiler.schedule(wait=skip, warmup=1, active=PROFILED_STEPS, repeat=1)
    step, read = loop.train_step, DataLoader.next_batch

    prof = torch.profiler.profile(activities=activities, schedule=schedule)

    def told_step(run: loop.Run) -> None:
        step(run)
        prof.step()

    def marked_read(loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.profiler.record_function(DATA_RANGE):
            return read(loader)

    with (
        prof,
        mock.patch.object(loop, "train_step", told_step),
        mock.patch.object(DataLoader, "next_batch", marked_read),
    ):
        train()
    return list(prof.events())


def step_profile(events: Sequence[FunctionEvent], device: torch.device) -> Profile:
    """The device's kernels on CUDA, the main thread's ops elsewhere."""
    if device.type == "cuda":
        return device_profile(events, str(device))
    return host_profile(events)


@contextlib.contextmanager
def levers(fused_adamw: bool | None, compiled_newton_schulz: bool) -> Iterator[None]:
    """The optimizer's levers for the runs inside, patched into the package (it has no setting
    for them: these runs measure whether it should): AdamW's fused kernels on or off (None: the
    package's choice, fused on CUDA and CPU), and Muon's Newton-Schulz compiled (torch.compile,
    one graph per matrix shape) or eager. Both are set either way, so an inner call decides."""
    fused = functools.partial(recipe.configure_optimizer, fused=fused_adamw)
    newton_schulz = NEWTON_SCHULZ
    if compiled_newton_schulz:
        newton_schulz = torch.compile(NEWTON_SCHULZ, dynamic=False)
    with (
        mock.patch.object(parallel, "configure_optimizer", fused),
        mock.patch.object(optimizers, "newton_schulz", newton_schulz),
    ):
        yield
