"""The GPU training path, exercised on CPU where PyTorch allows: compile + DDP (gloo), FSDP's
meta-device initialisation, bf16 autocast for a training step and for sampling, the MFU peak
of real device names, and `bench/gpu.py --smoke` (with --profile and --levers; the profile's
sorting of CUDA kernels on made-up events)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.autograd import DeviceType
from torch.autograd.profiler_util import FunctionEvent

from bench._profile import (
    NEWTON_SCHULZ,
    ROWS,
    Profile,
    breakdown,
    device_profile,
    levers,
    profile_table,
)
from gpt.config import GPTConfig, TrainConfig
from gpt.hellaswag import score as hs
from gpt.model.generate import generate
from gpt.model.gpt2 import GPT
from gpt.train import mfu, optimizers, parallel
from gpt.train.loop import train
from gpt.train.mfu import gpu_peak_flops
from gpt.train.recipe import configure_optimizer
from tests.test_distributed import (  # noqa: F401 (single_run is a fixture)
    OPTIMIZERS,
    ROOT,
    assert_same_run,
    single_run,
    torchrun,
    values,
)
from tests.test_hellaswag import _random_items

# The compiled paths against AdamW's one-process reference (the optimizer is not compiled, so
# Muon would add nothing here that tests/test_distributed.py does not cover).
ADAMW_REFERENCE = pytest.mark.parametrize("single_run", ["adamw"], indirect=True)


@pytest.mark.slow
@pytest.mark.distributed
@ADAMW_REFERENCE
def test_compiled_ddp_on_two_ranks_matches_eager_one_rank(
    single_run: tuple[str, Path],  # noqa: F811
    tiny_train_data: Path,
    tmp_path: Path,
) -> None:
    """torch.compile of the DDP-wrapped model (gloo, inductor's CPU code) against one eager
    process with twice the accumulation: the same losses and weights (within 1e-4, as DDP)."""
    out = tmp_path / "ddp_compiled"
    torchrun(tiny_train_data, out, "--save-every=0", "--compile")
    assert_same_run(out, single_run[1], OPTIMIZERS["adamw"][1])


@pytest.mark.slow
@pytest.mark.distributed
@ADAMW_REFERENCE
def test_compiled_fsdp_on_two_ranks_matches_eager_one_rank(
    single_run: tuple[str, Path],  # noqa: F811
    tiny_train_data: Path,
    tmp_path: Path,
) -> None:
    """FSDP2 with each block compiled on its own, built on the meta device: the same run."""
    out = tmp_path / "fsdp_compiled"
    torchrun(tiny_train_data, out, "--save-every=0", "--fsdp", "--compile")
    assert_same_run(out, single_run[1], OPTIMIZERS["adamw"][1])


FSDP_INIT_SCRIPT = """
import sys

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from gpt import distributed
from gpt.config import model_preset, train_preset
from gpt.model.families import build_model
from gpt.train.parallel import make_parallel

preset = sys.argv[1]
env = distributed.setup("cpu")
config = model_preset(preset, vocab_size=500, pad_vocab_multiple=64)
cfg = train_preset("tiny", model=preset, fsdp=True, data="unused", tokeniser="unused")
torch.manual_seed(7)
model, _ = make_parallel(cfg, env).build_model(config, None)
next_draw = torch.rand(3)
full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
torch.manual_seed(7)
reference = build_model(config)
assert torch.equal(next_draw, torch.rand(3)), "the global RNG advanced differently"
tied = model.lm_head.weight is model.token_embedding.weight
assert tied == config.tied, "lm_head tied differently"
assert all(isinstance(p, torch.distributed.tensor.DTensor) for p in model.blocks.parameters())
for name, weight in reference.state_dict().items():
    assert torch.equal(full[name], weight), name
print(f"rank {env.rank}: {len(full)} tensors identical")
distributed.cleanup()
"""


@pytest.mark.distributed
@pytest.mark.parametrize("preset", ["tiny", "modern-tiny"])
def test_fsdp_meta_init_gives_exactly_the_one_process_weights(tmp_path: Path, preset: str) -> None:
    """Built on the meta device, sharded over 2 ranks, then initialised: bit for bit the
    weights of build_model(config) on one process (either family), and the RNG left where
    build_model(config) leaves it."""
    script = tmp_path / "fsdp_init.py"
    script.write_text(FSDP_INIT_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*cmd, str(script), preset],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("tensors identical") == 2


def test_bf16_autocast_training_step_is_close_to_float32(tiny_run_config, tmp_path: Path) -> None:
    """Two steps under CPU bf16 autocast against float32 from the same weights and batches."""
    runs = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / f"run_{dtype}"
        cfg = tiny_run_config(
            dtype=dtype, max_steps=2, eval_every=100, samples=0, save_every=0, out=str(out)
        )
        train(cfg)
        runs[dtype] = values(out, "train")
    assert len(runs["bfloat16"]) == 2 and all(map(torch.isfinite, torch.tensor(runs["bfloat16"])))
    # bf16 keeps 8 significant bits: each matmul output is rounded by up to 2**-9 relative, and
    # the loss (~6.2 = ln 512 at init) inherits a few such roundings through the layers (~1e-2
    # absolute). 5e-2 allows that and still fails on a wrong dtype path (a loss rounded to
    # bf16 steps of 0.03, a skipped cast) or a broken step (losses off by 0.1 or more).
    assert runs["bfloat16"] == pytest.approx(runs["float32"], abs=5e-2)


def test_sampling_under_bf16_autocast_returns_valid_ids(tiny_config) -> None:
    torch.manual_seed(0)
    model = GPT(tiny_config).eval()
    prompt = torch.randint(0, tiny_config.vocab_size, (3, 5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = generate(model, prompt, 12, temperature=1.0, top_k=20,
                       generator=torch.Generator().manual_seed(1))  # fmt: skip
        again = generate(model, prompt, 12, temperature=1.0, top_k=20,
                         generator=torch.Generator().manual_seed(1))  # fmt: skip
        greedy = generate(model, prompt, 12, temperature=0)
    assert out.shape == greedy.shape == (3, 17)
    assert out.dtype == torch.long and torch.equal(out[:, :5], prompt)
    assert 0 <= int(out.min()) and int(out.max()) < tiny_config.vocab_size
    assert torch.equal(out, again)  # the same generator, the same samples
    assert 0 <= int(greedy.min()) and int(greedy.max()) < tiny_config.vocab_size


# torch.cuda.get_device_name strings of real cards -> dense bf16 peak (TF32 for float32 runs).
DEVICE_NAMES = [
    ("NVIDIA H100 80GB HBM3", 989.4e12, 494.7e12),  # SXM
    ("NVIDIA H100 PCIe", 756.5e12, 378e12),
    ("NVIDIA H100 NVL", 835.5e12, 417.5e12),
    ("NVIDIA H200", 989.4e12, 494.7e12),
    ("NVIDIA H200 NVL", 835.5e12, 417.5e12),
    ("NVIDIA H800", 989.4e12, 494.7e12),
    ("NVIDIA H800 PCIe", 756.5e12, 378e12),
    ("NVIDIA GH200 480GB", 989e12, 494.7e12),
    ("NVIDIA A100-SXM4-80GB", 312e12, 156e12),
    ("NVIDIA A100-SXM4-40GB", 312e12, 156e12),
    ("NVIDIA A100-PCIE-40GB", 312e12, 156e12),
    ("NVIDIA A100 80GB PCIe", 312e12, 156e12),
    ("NVIDIA A10", 125e12, 62.5e12),
    ("NVIDIA A10G", 125e12, 62.5e12),
    ("NVIDIA L40S", 362.05e12, 183e12),
    ("NVIDIA L40", 181.05e12, 90.5e12),
    ("NVIDIA L4", 121e12, 60e12),
    ("NVIDIA GeForce RTX 4090", 165.2e12, 82.6e12),
    ("NVIDIA GeForce RTX 3090", 71e12, 35.6e12),
    ("NVIDIA RTX A6000", 154.8e12, 77.4e12),
    ("NVIDIA RTX 6000 Ada Generation", 364.2e12, 182.1e12),
    ("Tesla V100-SXM2-16GB", 125e12, 15.7e12),
    ("Tesla V100-PCIE-32GB", 112e12, 14e12),
    ("Tesla T4", 65e12, 8.1e12),
]


@pytest.mark.parametrize(("name", "bf16", "tf32"), DEVICE_NAMES)
def test_mfu_peak_of_real_device_names(name: str, bf16: float, tf32: float) -> None:
    assert gpu_peak_flops(name, torch.bfloat16) == bf16
    assert gpu_peak_flops(name, torch.float32) == tf32


def test_the_cpu_peak_is_measured_once_a_process_refined_once_a_minute_and_only_rises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A second run in one process (a sweep, a test) reuses the first run's measurement; an
    evaluation refines it only when the last measurement is over a minute old, and keeps the
    fastest rate seen."""
    rates = iter([5e10, 4e10, 7e10])
    calls: list[float] = []
    clock = [1000.0]

    def measure(device: torch.device, seconds: float) -> float:
        calls.append(seconds)
        return next(rates)

    monkeypatch.setattr(mfu, "measure_matmul_flops", measure)
    monkeypatch.setattr(mfu.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(mfu, "_cpu_peak", {})
    assert mfu.cpu_peak_flops(refine=False) == 5e10  # the first run measures
    assert mfu.cpu_peak_flops(refine=False) == 5e10  # the next one does not
    assert mfu.cpu_peak_flops(refine=True) == 5e10  # too soon to refine
    clock[0] += 61
    assert mfu.cpu_peak_flops(refine=True) == 5e10  # refined, but slower: not kept
    clock[0] += 61
    assert mfu.cpu_peak_flops(refine=True) == 7e10
    assert calls == [0.5, 0.1, 0.1]


@pytest.mark.parametrize("name", ["NVIDIA B200", "AMD Instinct MI300X", "NVIDIA GeForce GTX 1080"])
def test_unknown_devices_have_no_peak(name: str) -> None:
    assert gpu_peak_flops(name, torch.bfloat16) is None


@pytest.mark.parametrize("recipe", ["gpt2", "modern"])
def test_gpu_benchmark_smoke_mode_prints_the_whole_table(tmp_path: Path, recipe: str) -> None:
    """`python bench/gpu.py --smoke --profile [--recipe modern]`, run as a user would from
    another directory: every row of the table, a resume that reproduces the uninterrupted losses
    (Muon's state included for the modern recipe), --deterministic's cost, and the profile's
    table of the compiled step."""
    result = run_gpu_bench(tmp_path, "--smoke", "--profile", "--recipe", recipe)
    rows = table_rows(result.stdout)
    for row in ("train, compiled", "train, compiled, --deterministic", "train, eager",
                "generate, batch 1", "generate, batch 8",
                "generate static, batch 1", "transformers static, batch 1",
                "generate static, batch 8", "transformers static, batch 8",
                "hellaswag", "save + resume", "save + resume, --deterministic"):  # fmt: skip
        assert row in rows, f"missing row {row!r} in:\n{result.stdout}"
        assert "failed" not in rows[row], rows[row]
    for row in ("save + resume", "save + resume, --deterministic"):
        assert "identical" in rows[row] and "differ" not in rows[row]
    assert "vocab " in rows["train, compiled"]  # the table says what vocabulary it trained
    assert "x the default kernels' tokens/s" in rows["train, compiled, --deterministic"]
    shares = profile_shares(result.stdout)
    assert list(shares) == ROWS
    # On CPU every op's own time lies in one outermost op, and the rest of the steps is idle:
    # the rows add up to the whole (rounded to 0.1% each).
    assert sum(shares.values()) == pytest.approx(100, abs=0.6)
    optimizer = (
        "optimizer: Muon (Newton-Schulz)" if recipe == "modern" else "optimizer: AdamW, clipping"
    )
    for busy in ("matmuls", "attention", optimizer, "data: loading, host-device copies"):
        assert shares[busy] > 0, busy


def run_gpu_bench(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python bench/gpu.py ARGS` from `cwd`, one thread; it must succeed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "bench" / "gpu.py"), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def table_rows(stdout: str) -> dict[str, str]:
    """The Markdown table lines of `stdout`, by their first cell."""
    return {line.split("|")[1].strip(): line for line in stdout.splitlines()
            if line.startswith("| ")}  # fmt: skip


def profile_shares(stdout: str) -> dict[str, float]:
    """The profile table's shares (percent), by row."""
    profile = stdout.split("Where a compiled training step's time goes")[1]
    rows = table_rows(profile)
    return {name: float(line.split("|")[2].strip().rstrip("%")) for name, line in rows.items()
            if name != "where the time goes"}  # fmt: skip


def test_gpu_benchmark_levers_one_at_a_time(tmp_path: Path) -> None:
    """`bench/gpu.py --smoke --levers`: the compiled step as set, then AdamW unfused, the
    micro-batch halved (twice the micro-steps) and auto (on CPU the whole step fits: one)."""
    rows = table_rows(run_gpu_bench(tmp_path, "--smoke", "--levers").stdout)
    expected = {
        "as set": "B=4 T=32 x 2 micro-steps",
        "fused AdamW off": "B=4 T=32 x 2 micro-steps",
        "micro-batch 2": "B=2 T=32 x 4 micro-steps",
        "micro-batch auto": "B=8 T=32 x 1 micro-steps",
    }
    assert [name for name in rows if name.startswith("train")] == [
        f"train, compiled, {lever}" for lever in expected
    ]
    for lever, shape in expected.items():
        row = rows[f"train, compiled, {lever}"]
        assert "failed" not in row and shape in row and "x the first row" in row, row
    assert "1.00x the first row" in rows["train, compiled, as set"]


def test_levers_set_adamws_fusion_and_compile_newton_schulz(tiny_config: GPTConfig) -> None:
    """The optimizer the run builds under each lever, and Newton-Schulz compiled giving eager's
    orthogonalisation (float32); both put back afterwards."""
    model = GPT(tiny_config)
    cpu = torch.device("cpu")
    for fused, expected in ((False, False), (True, True), (None, True)):  # None: fused on CPU
        with levers(fused, False):
            adamw = parallel.configure_optimizer(model, TrainConfig(), cpu)
        assert bool(adamw.defaults["fused"]) is expected
    update = torch.randn(24, 40, generator=torch.Generator().manual_seed(0))
    args = ((3.4445, -4.7750, 2.0315), 5, 1e-7, torch.float32)  # torch.optim.Muon's defaults
    with levers(None, True):
        assert optimizers.newton_schulz is not NEWTON_SCHULZ
        compiled = optimizers.newton_schulz(update, *args)
    torch.testing.assert_close(compiled, NEWTON_SCHULZ(update, *args), rtol=1e-4, atol=1e-5)
    assert optimizers.newton_schulz is NEWTON_SCHULZ
    assert parallel.configure_optimizer is configure_optimizer


def cuda_events() -> list[FunctionEvent]:
    """Two profiled steps on a made-up GPU: ops (their correlation ids) and the kernels they
    launched, 350 us from the first kernel to the last, with a 5 us and a 100 us gap."""

    def op(
        id: int, name: str, start: float, end: float, parent: FunctionEvent | None = None
    ) -> FunctionEvent:
        event = FunctionEvent(id=id, name=name, thread=1, start_us=start, end_us=end)
        event.cpu_parent = parent
        return event

    def kernel(name: str, start: float, end: float, launched_by: int = 0) -> FunctionEvent:
        cuda = {"device_type": DeviceType.CUDA, "linked_correlation_id": launched_by}
        return FunctionEvent(id=0, name=name, thread=7, start_us=start, end_us=end, **cuda)

    muon = op(2, "Optimizer.step#Muon.step", 600, 700)
    norm = op(4, "aten::rms_norm", 30, 40)
    return [
        op(100, "ProfilerStep*", 0, 500), op(101, "ProfilerStep*", 500, 1000),
        op(1, "aten::addmm", 10, 20), muon, op(3, "aten::mm", 610, 620, muon), norm,
        op(5, "aten::mul", 31, 32, norm), op(6, "data: next_batch", 0, 40),
        kernel("sm90_xmma_gemm_bf16bf16_bf16f32", 100, 200, launched_by=1),
        kernel("Memcpy HtoD (Pinned -> Device)", 200, 210),
        kernel("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64>>", 215, 265),
        kernel("elementwise_kernel<4, MulFunctor>", 265, 275, launched_by=5),
        kernel("triton_red_fused__log_softmax_nll_loss_forward_0", 275, 295),
        kernel("nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_NTN", 395, 425, launched_by=3),
        kernel("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMath"
               "Functor<float, 4>>", 425, 445),
        kernel("triton_poi_fused_add_0", 445, 450),
    ]  # fmt: skip


def test_profile_sorts_cuda_kernels_and_gaps() -> None:
    """Each kernel by its launching op's ranges (Muon's step), its own name or its op's (the
    multiply inside an RMSNorm), the gaps by their length; per step and as shares."""
    profile = device_profile(cuda_events(), "cuda:0")
    assert isinstance(profile, Profile) and profile.steps == 2 and profile.data_us == 40
    assert profile.window == (100, 450)
    expected = {
        "matmuls": 100, "attention": 50, "loss (cross-entropy)": 20, "norms": 10,
        "other elementwise and fused": 5, "optimizer: AdamW, clipping": 20,
        "optimizer: Muon (Newton-Schulz)": 30, "data: loading, host-device copies": 10,
        "idle: waiting for the host (data, Python, sync)": 100,
        "idle: gaps between kernels (< 20 us)": 5,
    }  # fmt: skip
    assert breakdown(profile) == expected
    rows = table_rows(profile_table(profile))
    assert (
        "| 28.6% | 0.05 " in rows["matmuls"]
        and "sm90_xmma_gemm_bf16bf16_bf16f32" in rows["matmuls"]
    )
    assert "multi_tensor_apply_kernel<...>" in rows["optimizer: AdamW, clipping"]


def test_gpu_benchmark_uses_gpt2s_vocabulary_off_the_smoke_run(
    gpt2_bpe_dir: Path, tmp_path: Path
) -> None:
    """Off the smoke run the tokeniser is GPT-2's, whatever the recipe (it was chosen by the
    setting's identity, which the modern recipe replaces: the first H200 runs of that recipe
    trained on the smoke run's 300-token BPE, without GPT-2's 50,257-row head)."""
    code = (
        "from pathlib import Path; import bench.gpu as g; "
        f"print(g.tokeniser_for(False, Path({str(tmp_path)!r})).n_vocab)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GPT2_BPE_DIR": str(gpt2_bpe_dir)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True,
                         text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["50257"]


def test_decoding_and_packed_scoring_run_without_cudnn_attention(tiny_config: GPTConfig) -> None:
    """cuDNN's attention plans per shape (tens of ms each on an H200): decoding and packed
    HellaSwag batches, whose shapes change at every call, must run with it switched off, and
    switch it back on afterwards for training (the flags are global, so they are readable on
    CPU too)."""
    import numpy as np

    torch.manual_seed(0)
    model = GPT(tiny_config).eval()
    seen: list[bool] = []
    model.blocks[0].register_forward_pre_hook(
        lambda *_: seen.append(torch.backends.cuda.cudnn_sdp_enabled())
    )
    assert torch.backends.cuda.cudnn_sdp_enabled()
    generate(model, torch.zeros(2, 3, dtype=torch.long), 4, temperature=0)
    items = _random_items(np.random.default_rng(0), 5, tiny_config.vocab_size)
    hs.score_items(model, items, hs.score_packed_batch, device=torch.device("cpu"), batch_size=2)
    assert len(seen) == 4 + 3 and not any(seen)  # 1 prefill + 3 steps, 3 packed batches
    assert torch.backends.cuda.cudnn_sdp_enabled()
    model(torch.zeros(1, 3, dtype=torch.long))  # a training-shaped forward keeps the default
    assert seen[-1]


def test_deterministic_flag_turns_on_deterministic_kernels(tiny_run_config) -> None:
    """--deterministic: PyTorch's deterministic algorithms, cuBLAS's fixed workspace and no
    cuDNN attention, process-wide (so checked in a fresh process)."""
    cfg = tiny_run_config(deterministic=True)
    code = (
        "import os, torch\n"
        "from gpt.config import TrainConfig\n"
        "from gpt.distributed import setup\n"
        "from gpt.train.parallel import make_parallel\n"
        f"make_parallel(TrainConfig(**{cfg.__dict__!r}), setup('cpu'))\n"
        "print(torch.are_deterministic_algorithms_enabled(),"
        " torch.backends.cuda.cudnn_sdp_enabled(), os.environ['CUBLAS_WORKSPACE_CONFIG'])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("CUBLAS_WORKSPACE_CONFIG", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "False", ":4096:8"]
