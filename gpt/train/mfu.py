"""Model FLOPs utilisation: the training FLOPs a run achieves over its devices' peak.

MFU = flops_per_token x tokens/s / (peak x world_size), with flops_per_token the model's
training FLOPs per token (6N + 12·L·C·T, GPT.flops_per_token) and peak one device's FLOP/s:
--peak-flops if given, else the datasheet figure of a known GPU (`GPU_PEAK_FLOPS`: dense bf16,
or TF32 for float32 runs), else on CPU the fastest float32 matmul measured during the run (and
by earlier runs of the same process).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from gpt import distributed
from gpt.config import TrainConfig

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


REFINE_EVERY = 60.0
"""Seconds between two refinements of the CPU's peak (a short run, as in the tests, evaluates
every few seconds; a refinement costs 0.1 s)."""

_cpu_peak: dict[str, float] = {}
"""The fastest CPU matmul rate this process has measured ("rate") and when it last measured
("at", time.monotonic): a second run in the same process (a sweep, a test) starts from it."""


def cpu_peak_flops(refine: bool) -> float:
    """The CPU's practical peak: the fastest matmul this process has measured (0.5 s of them the
    first time), after 0.1 s more when `refine` and the last measurement is over REFINE_EVERY
    seconds old."""
    stale = time.monotonic() - _cpu_peak.get("at", -math.inf) > REFINE_EVERY
    if "rate" not in _cpu_peak or (refine and stale):
        seconds = 0.1 if "rate" in _cpu_peak else 0.5
        rate = measure_matmul_flops(torch.device("cpu"), seconds=seconds)
        _cpu_peak.update(rate=max(rate, _cpu_peak.get("rate", 0.0)), at=time.monotonic())
    return _cpu_peak["rate"]


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
    measurement on CPU (refined at each evaluation: see `MFU.remeasure`), else None (no MFU; on
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
        return cpu_peak_flops(refine=False)
    return None


@dataclass
class MFU:
    """A run's MFU meter: the peak of one device and the model's training FLOPs per token."""

    peak: float | None
    """Peak FLOP/s of one device (None: MFU not reported)."""
    flops_per_token: int
    """Training FLOPs per token of the model at seq_len."""
    world_size: int
    measured: bool
    """Whether the peak is a matmul measurement on CPU (then `remeasure` refines it)."""

    @classmethod
    def for_run(
        cls,
        cfg: TrainConfig,
        device: torch.device,
        dtype: torch.dtype,
        flops_per_token: int,
        world_size: int,
    ) -> MFU:
        measured = cfg.peak_flops is None and device.type == "cpu"
        peak = peak_flops(cfg, device, dtype)
        return cls(peak, flops_per_token, world_size, measured)

    def of(self, tokens_per_second: float) -> float | None:
        """The MFU of a step that ran at `tokens_per_second` over all ranks (None: no peak)."""
        if not self.peak:
            return None
        return self.flops_per_token * tokens_per_second / (self.peak * self.world_size)

    def remeasure(self) -> None:
        """On CPU, take the best matmul rate seen so far as the peak (`cpu_peak_flops` keeps it,
        measuring again at most once every REFINE_EVERY seconds): other processes sharing the
        cores make any single measurement low (and MFU too high)."""
        if self.measured:
            self.peak = cpu_peak_flops(refine=True)
