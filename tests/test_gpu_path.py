"""The GPU training path, exercised on CPU where PyTorch allows: compile + DDP (gloo), FSDP's
meta-device initialisation, bf16 autocast for a training step and for sampling, the MFU peak
of real device names, and `bench/gpu.py --smoke`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt.config import GPTConfig
from gpt.hellaswag import score as hs
from gpt.model.generate import generate
from gpt.model.gpt2 import GPT
from gpt.train.loop import train
from gpt.train.mfu import gpu_peak_flops
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


@pytest.mark.parametrize("name", ["NVIDIA B200", "AMD Instinct MI300X", "NVIDIA GeForce GTX 1080"])
def test_unknown_devices_have_no_peak(name: str) -> None:
    assert gpu_peak_flops(name, torch.bfloat16) is None


@pytest.mark.parametrize("recipe", ["gpt2", "modern"])
def test_gpu_benchmark_smoke_mode_prints_the_whole_table(tmp_path: Path, recipe: str) -> None:
    """`python bench/gpu.py --smoke [--recipe modern]`, run as a user would from another
    directory: every row of the table, and a resume that reproduces the uninterrupted losses
    (Muon's state included for the modern recipe)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--smoke", "--recipe", recipe],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in result.stdout.splitlines()
            if line.startswith("| ")}  # fmt: skip
    for row in ("train, compiled", "train, eager", "generate, batch 1", "generate, batch 8",
                "hellaswag", "save + resume", "save + resume, --deterministic"):  # fmt: skip
        assert row in rows, f"missing row {row!r} in:\n{result.stdout}"
        assert "failed" not in rows[row], rows[row]
    for row in ("save + resume", "save + resume, --deterministic"):
        assert "identical" in rows[row] and "differ" not in rows[row]
    assert "vocab " in rows["train, compiled"]  # the table says what vocabulary it trained


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
