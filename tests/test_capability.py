"""gpt/capability.py: what the CPU does natively, from cpuinfo's flags, ATen's kernel level and
oneDNN's cap, for the CPUs users have (hand-made flags) and for this one (a real process)."""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt import capability
from gpt.capability import CpuCapability, capability_from, onednn_allows

ROOT = Path(__file__).resolve().parent.parent
AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}

SAPPHIRE_RAPIDS = {"architecture": "x86_64", "cpu_name": "Intel(R) Xeon(R) Processor",
                   "avx2": True, "avx512_bf16": True, "amx_bf16": True}  # fmt: skip
ZEN4 = {"architecture": "x86_64", "cpu_name": "AMD EPYC 9R14",
        "avx2": True, "avx512_bf16": True, "amx_bf16": False}  # fmt: skip
SKYLAKE = {"architecture": "x86_64", "cpu_name": "Intel(R) Xeon(R) Gold 6148",
           "avx2": True, "avx512_bf16": False, "amx_bf16": False}  # fmt: skip
ZEN3 = {"architecture": "x86_64", "cpu_name": "AMD EPYC", "avx2": True}
GRAVITON3 = {"architecture": "arm64", "cpu_name": "Neoverse-V1", "bf16": True}


@pytest.mark.parametrize(
    ("flags", "aten", "isa", "native"),
    [
        (SAPPHIRE_RAPIDS, "AVX512", "AMX", True),
        (ZEN4, "AVX512", "AVX-512", True),
        (SKYLAKE, "AVX512", "AVX-512", False),
        (ZEN3, "AVX2", "AVX2", False),
        (SAPPHIRE_RAPIDS, "AVX2", "AVX2", False),  # ATEN_CPU_CAPABILITY=avx2 on an AMX machine
        (GRAVITON3, "SVE256", "SVE256", True),
        ({"architecture": "arm64", "cpu_name": "Cortex-A72"}, "DEFAULT", "DEFAULT", False),
    ],
    ids=["amx", "avx512-bf16", "avx512", "avx2", "amx-as-avx2", "arm-bf16", "arm"],
)
def test_capability_of_the_cpus_users_have(
    flags: dict[str, object], aten: str, isa: str, native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert capability_from(flags, aten) == CpuCapability(str(flags["cpu_name"]), isa, native)


@pytest.mark.parametrize(
    ("cap", "isa", "native"),
    [("AVX2", "AVX-512", False), ("AVX512_CORE_BF16", "AVX-512", True), ("ALL", "AMX", True)],
)
def test_onednn_cap_limits_what_counts_as_native(
    cap: str, isa: str, native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONEDNN_MAX_CPU_ISA below AMX keeps an AMX machine's AVX-512 BF16 dot products; below
    those, bfloat16 is emulated (oneDNN's matmuls are what multiply it)."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert capability_from(SAPPHIRE_RAPIDS, "AVX512") == CpuCapability(
        str(SAPPHIRE_RAPIDS["cpu_name"]), isa, native
    )


def test_onednn_allows_reads_the_cap_and_ignores_unknown_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert onednn_allows("AVX2") and not onednn_allows("AVX512_CORE")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "SOMETHING_NEWER")
    assert onednn_allows("AVX512_CORE_AMX")


def test_doctests() -> None:
    assert doctest.testmod(capability).failed == 0


@pytest.mark.cpu_dependent
def test_this_cpu_as_an_avx2_machine_has_no_native_bfloat16() -> None:
    """The variables CI uses to run as an AVX2-only CPU reach the decision in a fresh process,
    whatever this machine is."""
    env = {**os.environ, **AVX2_ONLY, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "gpt.capability"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].endswith(", AVX2, no native bfloat16")


@pytest.mark.cpu_dependent
def test_this_process_reports_what_it_decided() -> None:
    """describe() names this CPU's level and agrees with native_bfloat16()."""
    cpu = torch.device("cpu")
    line = capability.describe(cpu)
    level = capability.cpu_capability().isa
    assert line.startswith("cpu: ") and f", {level}, " in line
    assert line.endswith(", no native bfloat16") != capability.native_bfloat16(cpu)
    assert capability.fast_dtype(cpu) == (
        torch.bfloat16 if capability.native_bfloat16(cpu) else torch.float32
    )


@pytest.mark.parametrize("script", sorted((ROOT / "bench").glob("[!_]*.py")), ids=lambda p: p.name)
def test_every_benchmark_names_the_machine_with_its_isa_level(script: Path) -> None:
    """Figures differ by ISA level, so every benchmark prints bench/_common.py's machine line
    (the CPU's model and level); no script keeps a description of its own."""
    source = script.read_text()
    assert "machine(" in source and "def machine(" not in source
