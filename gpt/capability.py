"""What the device does natively, decided once per process: the one place that picks a dtype or a
kernel for speed asks here, and so does a test whose expectation depends on the CPU.

    python -m gpt.capability        # prints e.g. "cpu: AMD EPYC, AVX2, no native bfloat16"

Why it matters: a bfloat16 matmul is done by the CPU's matrix units where it has them (AMX, or
AVX-512's BF16 dot products) and emulated elsewhere: on a 2-core AMD EPYC with AVX2 only, a
256x1024 @ 1024x256 product took 152 ms in bfloat16 against 2.2 ms in float32 (issue 16). So
every speed choice that involves bfloat16 (Muon's Newton-Schulz, packed bfloat16 weights for
decoding, `--dtype auto`) follows `native_bfloat16(device)`:

    cuda    the GPU's own answer (Ampere and newer multiply bfloat16 natively)
    cpu     x86: AMX-BF16 or AVX512-BF16 present, and neither PyTorch's ATen capability
            (ATEN_CPU_CAPABILITY) nor oneDNN's (ONEDNN_MAX_CPU_ISA) is capped below them;
            ARM: the BF16 extension
    mps     no (not measured; float32 is the safe choice)

The two variables are how CI runs the suite "as an AVX2-only CPU" on a machine with AMX
(`ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`): both change what PyTorch runs (ATen's
vectorised kernels and oneDNN's), and both are read here, so the decisions and the tests that ask
this module follow the emulated machine.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

# oneDNN's ISA names (ONEDNN_MAX_CPU_ISA), lowest first; a cap at or above AVX512_CORE_BF16
# leaves bfloat16 dot products to the hardware.
ONEDNN_ISAS = (
    "SSE41",
    "AVX",
    "AVX2",
    "AVX2_VNNI",
    "AVX2_VNNI_2",
    "AVX512_CORE",
    "AVX512_CORE_VNNI",
    "AVX512_CORE_BF16",
    "AVX10_1_512",
    "AVX512_CORE_FP16",
    "AVX10_1_512_AMX",
    "AVX512_CORE_AMX",
    "AVX10_1_512_AMX_FP16",
    "AVX512_CORE_AMX_FP16",
)


@dataclass(frozen=True)
class CpuCapability:
    """The CPU as PyTorch will use it in this process."""

    name: str
    """The model name cpuinfo reports (e.g. "AMD EPYC", "Intel(R) Xeon(R) Processor")."""
    isa: str
    """The widest level in use: "AMX", "AVX-512", "AVX2", or PyTorch's own name for others."""
    native_bfloat16: bool
    """Whether bfloat16 matmuls run on the hardware rather than being emulated."""


def onednn_allows(isa: str) -> bool:
    """Whether ONEDNN_MAX_CPU_ISA (unset: everything) lets oneDNN use `isa`."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if cap not in ONEDNN_ISAS:  # ALL, DEFAULT or a name this table predates: no cap
        return True
    return ONEDNN_ISAS.index(isa) <= ONEDNN_ISAS.index(cap)


@functools.cache
def cpu_capability() -> CpuCapability:
    """This process's CPU, read once (PyTorch reads the two variables once at start-up too)."""
    flags = torch.cpu.get_capabilities()  # cpuinfo's flags: what the silicon has
    aten = torch.backends.cpu.get_cpu_capability()  # "AVX512", "AVX2", "DEFAULT", "SVE256", ...
    return capability_from(flags, aten)


def capability_from(flags: Mapping[str, Any], aten: str) -> CpuCapability:
    """The capability of a CPU with cpuinfo's `flags` when ATen runs its `aten` kernels, under
    this process's ONEDNN_MAX_CPU_ISA.

    >>> xeon = {"architecture": "x86_64", "cpu_name": "Xeon", "amx_bf16": True, "avx512_bf16": True}
    >>> capability_from(xeon, "AVX512")
    CpuCapability(name='Xeon', isa='AMX', native_bfloat16=True)
    >>> capability_from(xeon, "AVX2")  # ATEN_CPU_CAPABILITY=avx2
    CpuCapability(name='Xeon', isa='AVX2', native_bfloat16=False)
    """
    name = str(flags.get("cpu_name") or flags.get("architecture") or "unknown CPU")
    if flags.get("architecture") not in ("x86", "x86_64"):
        return CpuCapability(name, aten, bool(flags.get("bf16")))
    wide = aten == "AVX512"
    amx = wide and bool(flags.get("amx_bf16")) and onednn_allows("AVX512_CORE_AMX")
    bf16_dots = wide and bool(flags.get("avx512_bf16")) and onednn_allows("AVX512_CORE_BF16")
    isa = "AMX" if amx else {"AVX512": "AVX-512", "AVX2": "AVX2"}.get(aten, aten)
    return CpuCapability(name, isa, amx or bf16_dots)


def native_bfloat16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 natively (see the module docstring)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return cpu_capability().native_bfloat16
    return False


def fast_dtype(device: torch.device) -> torch.dtype:
    """The narrowest dtype `device` multiplies natively: bfloat16 where it can, else float32."""
    return torch.bfloat16 if native_bfloat16(device) else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16"."""
    return str(dtype).removeprefix("torch.")


def dtype_choice(dtype: torch.dtype, device: torch.device) -> str:
    """The dtype's name, with a warning where it is bfloat16 that `device` would emulate."""
    slow = dtype == torch.bfloat16 and not native_bfloat16(device)
    return dtype_name(dtype) + (" (emulated here: float32 is faster)" if slow else "")


def describe(device: torch.device) -> str:
    """One line for a run's header, e.g. "cpu: AMD EPYC, AVX2, no native bfloat16"."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "cpu":
        cpu = cpu_capability()
        name = f"{cpu.name}, {cpu.isa}"
    else:
        name = device.type
    native = "native bfloat16" if native_bfloat16(device) else "no native bfloat16"
    return f"{device.type}: {name}, {native}"


if __name__ == "__main__":
    print(describe(torch.device("cpu")))
    if torch.cuda.is_available():
        print(describe(torch.device("cuda")))
