"""Shared helpers of the benchmarks: the machine (with the CPU's ISA level), timing, tables."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from gpt.capability import cpu_capability


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu() -> str:
    """The CPU's model and the level PyTorch uses it at, e.g. "AMD EPYC 7B13 (AVX2, no native
    bfloat16)": figures differ by ISA level, so every table names it (gpt/capability.py)."""
    native = "native bfloat16" if cpu_capability().native_bfloat16 else "no native bfloat16"
    return f"{cpu_model()} ({cpu_capability().isa}, {native})"


def machine(*libraries: str) -> str:
    """One line: cores, CPU and its ISA level, load, GPU, torch threads, versions and date."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    versions = ", ".join((f"Python {platform.python_version()}", *libraries))
    return (
        f"{os.cpu_count()} cores, {cpu()}{load}, {gpu}; torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads; {versions}; {datetime.date.today()}"
    )


def timed(fn: Callable[..., object], *args: Any, **kwargs: Any) -> float:
    """Seconds one call fn(*args, **kwargs) takes."""
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def read_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Memory read bandwidth in bytes/s: the best of `repeats` sums over a large float32 tensor
    (far larger than the caches, so every byte comes from memory)."""
    x = torch.ones(megabytes * 2**20 // 4)
    x.sum()
    best = min(timed(x.sum) for _ in range(repeats))
    return x.numel() * 4 / best


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def cycle_to(docs: list[str], n_bytes: int) -> list[str]:
    """`docs` repeated in order until they hold at least `n_bytes` of UTF-8."""
    out: list[str] = []
    total = 0
    while total < n_bytes:
        for d in docs:
            out.append(d)
            total += len(d.encode())
            if total >= n_bytes:
                break
    return out
