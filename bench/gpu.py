"""The GPU path in one command: training, generation, HellaSwag and resume, one table.

    python bench/gpu.py                    # one CUDA GPU, the gpt2 preset, about 5 minutes
    python bench/gpu.py --recipe modern    # the modern preset (Qwen3 layout, Muon + AdamW)
    python bench/gpu.py --smoke            # the same code on CPU with the tiny preset, in seconds
    python bench/gpu.py --profile          # also: where a compiled training step's time goes
    python bench/gpu.py --levers           # only the compiled step, with each lever alone

Everything goes through the project's own functions: `train(TrainConfig)` for training (its
metrics.jsonl gives tokens/s and MFU per step), `gpt.model.generate`,
`gpt.hellaswag.score.evaluate`, and
`--resume` for the resume check. The data are synthetic: random token ids, decoded to text and
written by gpt/data/prepare.py into shards in a temporary directory (the loader wraps around them).

Rows, on CUDA (the `gpt2` preset, bf16 autocast, batch 64 x 1024, 4 micro-steps per step):
- train, compiled / train, eager: median tokens/s and MFU of the steps after the warm-up ones
  (compilation happens in the first), and the peak of allocated GPU memory;
- train, compiled, --deterministic: the compiled run with deterministic kernels only; its note
  gives its tokens/s over the default kernels' (the flag's cost);
- generate, batch 1 / batch 8: new tokens per second, after a warm-up call;
- generate static, batch 1 / batch 8: greedy new tokens per second of `generate(static=True)`
  (gpt/model/static_decode.py: one compiled step, a CUDA graph), the weights in the run's dtype,
  best of 3 after the call that compiles; its notes give the ratios to the `transformers static`
  row (transformers' generate with cache_implementation="static", which compiles its forward on
  CUDA, mode reduce-overhead: the best it offers) and to our eager loop on the same weights.
  Targets (issue 18): gpt2 batch 1 >= 1,500 tok/s and >= 3x transformers, batch 8 >= 3x; the
  modern preset likewise. --smoke traces the step without inductor (dynamo's eager backend);
- hellaswag: items per second over 200 items of HELLASWAG_FILE (or ../shared/data/hellaswag/),
  synthetic items if there is no file (the row says so);
- save + resume: a run saves at step N and goes on K steps; resuming from that checkpoint
  repeats those K steps; the row says whether the K losses are identical. Twice: with the
  default kernels (some of which, on a GPU, differ from run to run in their last bits) and with
  --deterministic.
A row that fails says so in the table (traceback on stderr); the others still run.

The training step's levers (issue 18), for every training run of the command: --fused-adamw /
--no-fused-adamw (default: the package's choice, fused), --compile-ns (Muon's Newton-Schulz
compiled), --micro-batch N|auto (the tokens of a step kept: the accumulation follows). --levers
runs only the compiled step: as set, then with each lever changed alone (AdamW's fusion flipped,
Newton-Schulz's compilation flipped for the modern recipe, the micro-batch halved, the
micro-batch auto), one row each with its tokens/s over the first row's. --profile adds one table
from torch.profiler over a few compiled steps: the share of time in matmuls, attention, the
loss, norms, other kernels, AdamW, Muon's Newton-Schulz, data, and the device's idle gaps
(bench/_profile.py); with --smoke, the same table from the CPU's ops.
The GPT-2 encoding must be available (tiktoken's cache, the network, or GPT2_BPE_DIR; the
shared data folder is used when present). Target (issue 9): >= 45% MFU on one H100/H200.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import io
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path[0] = str(Path(__file__).resolve().parents[1])  # import the package, not bench/ siblings

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402

from bench._common import machine, table  # noqa: E402
from bench._profile import (  # noqa: E402
    PROFILED_STEPS,
    levers,
    profile_table,
    profiled_events,
    step_profile,
)
from gpt import checkpoint as ckpt  # noqa: E402
from gpt.cli import UserError, run  # noqa: E402
from gpt.config import MODERN_RECIPE, TrainConfig, batch_size_arg  # noqa: E402
from gpt.data.prepare import prepare_dataset  # noqa: E402
from gpt.data.shards import read_manifest  # noqa: E402
from gpt.data.sources import iter_documents  # noqa: E402
from gpt.data.tokeniser import GPTTokeniser, Tokeniser, get_tokeniser  # noqa: E402
from gpt.hellaswag import score as hs  # noqa: E402
from gpt.hellaswag.data import find_hellaswag_file, load_examples  # noqa: E402
from gpt.hf import save_pretrained  # noqa: E402
from gpt.model import static_decode  # noqa: E402
from gpt.model.base import LanguageModel  # noqa: E402
from gpt.model.generate import generate  # noqa: E402
from gpt.train import rundir  # noqa: E402
from gpt.train.loop import train  # noqa: E402
from gpt.train.parallel import autocast  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@dataclass(frozen=True)
class Setting:
    """What one mode runs."""

    device: str
    dtype: str
    model: str
    batch_size: int
    seq_len: int
    accum: int
    """Micro-steps per optimizer step."""
    compiled_steps: int
    eager_steps: int
    warmup: int
    """Steps left out of the medians (compilation, allocator warm-up)."""
    resume: tuple[int, int]
    """(N, K): save after N steps, then K more steps, compared after resuming."""
    prompt: int
    new_tokens: int
    hellaswag_items: int
    data_tokens: int
    """Synthetic tokens written (the loader wraps around them)."""


GPU = Setting("cuda", "bfloat16", "gpt2", 64, 1024, 4, 30, 10, 5, (3, 3), 16, 128, 200, 2_000_000)
SMOKE = Setting("cpu", "float32", "tiny", 4, 32, 2, 4, 3, 1, (2, 2), 8, 16, 8, 20_000)


def tokeniser_for(smoke: bool, work: Path) -> Tokeniser:
    """GPT-2's encoding on the GPU, for either recipe (the presets' real vocabulary); on the
    smoke run a small BPE trained in a moment on the embedded python-docs corpus."""
    if not smoke:
        if (SHARED / "gpt2" / "vocab.bpe").is_file():
            os.environ.setdefault("GPT2_BPE_DIR", str(SHARED / "gpt2"))
        return get_tokeniser("gpt2")
    tok = GPTTokeniser.train(iter_documents("python-docs", max_docs=10), 300)
    tok.save(work / "smoke.tkn")
    return get_tokeniser(str(work / "smoke.tkn"))


def random_documents(tok: Tokeniser, tokens: int, seed: int = 0) -> Iterator[str]:
    """Documents of 1,000 uniformly random token ids each (end-of-text excluded), as text."""
    rng = np.random.default_rng(seed)
    for _ in range(max(1, tokens // 1000)):
        ids = rng.integers(0, tok.n_vocab, 1000)
        yield tok.decode([int(i) for i in ids if i != tok.eot_token])


def synthetic_data(setting: Setting, tok: Tokeniser, work: Path) -> Path:
    """Shards of random tokens (train split only) written by gpt/data/prepare.py."""
    data = work / "data"
    docs = random_documents(tok, setting.data_tokens)
    prepare_dataset(docs, data, tok.spec, shard_size=setting.data_tokens // 4, val_tokens=0,
                    workers=1, progress=False)  # fmt: skip
    return data


def run_config(setting: Setting, data: Path, tok: Tokeniser, out: Path, **over: Any) -> TrainConfig:
    """The benchmark's training run: no validation, HellaSwag, samples or export."""
    fields: dict[str, Any] = {
        "data": str(data),
        "tokeniser": tok.spec,
        "out": str(out),
        "model": setting.model,
        "device": setting.device,
        "dtype": setting.dtype,
        "batch_size": setting.batch_size,
        "seq_len": setting.seq_len,
        "total_batch_size": setting.batch_size * setting.seq_len * setting.accum,
        "warmup_steps": setting.compiled_steps,
        "eval_every": 10_000,
        "hellaswag": "off",
        "samples": 0,
        "save_every": 0,
        "export": False,
        "plot": False,
        "progress": False,
        **over,
    }
    return TrainConfig(**fields)


def quietly(fn: Callable[[], Any]) -> Any:
    """fn() with its console lines kept back; they go to stderr if it fails."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            return fn()
    except BaseException:
        sys.stderr.write(captured.getvalue())
        raise


def train_events(out: Path) -> list[dict[str, Any]]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["kind"] == "train"]


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> str:
    """Peak allocated GPU memory since reset_peak; '-' on CPU (no allocator statistics)."""
    if device.type != "cuda":
        return "-"
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"


def training_row(name: str, setting: Setting, cfg: TrainConfig, device: torch.device) -> list[str]:
    """Train with `cfg`; one table row from its per-step log."""
    reset_peak(device)
    quietly(lambda: train(cfg))
    steps = train_events(Path(cfg.out))[setting.warmup :]
    tok_s = statistics.median(e["tok_s"] for e in steps)
    mfus = [e["mfu"] for e in steps if "mfu" in e]
    mfu = f"{100 * statistics.median(mfus):.1f}%" if mfus else "- (pass --peak-flops)"
    vocab = read_manifest(cfg.data)["vocab_size"]
    resolved = json.loads((Path(cfg.out) / "config.json").read_text())  # auto's choice
    note = (
        f"{cfg.model} {cfg.dtype}, vocab {vocab:,}, B={resolved['train']['batch_size']} "
        f"T={cfg.seq_len} x {resolved['grad_accum_steps']} micro-steps; median of steps "
        f"{setting.warmup}-{cfg.max_steps - 1}"
    )
    return [name, f"{tok_s:,.0f} tok/s", mfu, peak_memory(device), note]


def median_tok_s(cfg: TrainConfig, setting: Setting) -> float:
    """The median tokens/s of a finished run's steps after the warm-up ones."""
    return statistics.median(e["tok_s"] for e in train_events(Path(cfg.out))[setting.warmup :])


@contextlib.contextmanager
def deterministic_flags_kept() -> Iterator[None]:
    """The process-wide settings that --deterministic turns on (gpt/train/parallel.py's
    deterministic_kernels), put back as they were after the block."""
    algorithms = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn_attention = torch.backends.cuda.cudnn_sdp_enabled()
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
        torch.backends.cuda.enable_cudnn_sdp(cudnn_attention)
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace


def deterministic_row(setting: Setting, compiled: TrainConfig, device: torch.device) -> list[str]:
    """The compiled run (`compiled`, already run) again with --deterministic, and its tokens/s
    over the default kernels'."""
    cfg = dataclasses.replace(compiled, out=str(Path(compiled.out).with_name("deterministic")),
                              deterministic=True)  # fmt: skip
    with deterministic_flags_kept():
        row = training_row("train, compiled, --deterministic", setting, cfg, device)
    ratio = median_tok_s(cfg, setting) / median_tok_s(compiled, setting)
    row[-1] = f"{ratio:.2f}x the default kernels' tokens/s; {row[-1]}"
    return row


def lever_rows(
    args: argparse.Namespace, setting: Setting, data: Path, tok: Tokeniser, work: Path,
    device: torch.device, over: dict[str, Any],
) -> list[list[str]]:  # fmt: skip
    """The compiled training row as set, then with one lever changed at a time (see the module
    doc); each note starts with the row's tokens/s over the first row's."""
    fused, ns = args.fused_adamw, args.compile_ns
    micro = over.get("batch_size", setting.batch_size)
    variants: list[tuple[str, bool | None, bool, dict[str, Any]]] = [
        ("as set", fused, ns, {}),
        (f"fused AdamW {'on' if fused is False else 'off'}", fused is False, ns, {}),
    ]
    if args.recipe == "modern":
        variants.append((f"Newton-Schulz {'eager' if ns else 'compiled'}", fused, not ns, {}))
    if isinstance(micro, int) and micro > 1:
        variants.append((f"micro-batch {micro // 2}", fused, ns, {"batch_size": micro // 2}))
    variants.append(("micro-batch auto", fused, ns, {"batch_size": "auto"}))
    rows: list[list[str]] = []
    rates: dict[int, float] = {}
    for i, (name, fused_adamw, compiled_ns, changes) in enumerate(variants):
        cfg = run_config(setting, data, tok, work / f"lever-{i}", max_steps=setting.compiled_steps,
                         compile=True, **{**over, **changes})  # fmt: skip
        lever = functools.partial(lever_row, i, f"train, compiled, {name}", setting, cfg, device,
                                  fused_adamw, compiled_ns, rates)  # fmt: skip
        rows.append(guarded(f"train, compiled, {name}", lever))
    return rows


def lever_row(
    index: int, name: str, setting: Setting, cfg: TrainConfig, device: torch.device,
    fused_adamw: bool | None, compiled_ns: bool, rates: dict[int, float],
) -> list[str]:  # fmt: skip
    """Row `index` of --levers; its tokens/s go into `rates`, and over the first row's into its
    note."""
    with levers(fused_adamw, compiled_ns):
        row = training_row(name, setting, cfg, device)
    rates[index] = median_tok_s(cfg, setting)
    if 0 in rates:
        row[-1] = f"{rates[index] / rates[0]:.2f}x the first row; {row[-1]}"
    return row


def profile_section(
    setting: Setting, data: Path, tok: Tokeniser, work: Path, device: torch.device,
    over: dict[str, Any],
) -> str:  # fmt: skip
    """--profile's table: a compiled run, its steps after the warm-up profiled."""
    first = setting.warmup + 1
    cfg = run_config(setting, data, tok, work / "profile", max_steps=first + PROFILED_STEPS,
                     compile=True, **over)  # fmt: skip
    try:
        events = profiled_events(lambda: quietly(lambda: train(cfg)), setting.warmup, device)
        body = profile_table(step_profile(events, device))
    except Exception as error:  # noqa: BLE001 - reported, and the table of rows still prints
        traceback.print_exc()
        body = f"failed: {type(error).__name__}: {error}"
    title = f"Where a compiled training step's time goes (torch.profiler, steps {first}-"
    return f"{title}{first + PROFILED_STEPS - 1}):\n{body}"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def generation_row(
    model: LanguageModel, batch: int, setting: Setting, dtype: torch.dtype
) -> list[str]:
    """New tokens per second of `generate` for `batch` sequences (random prompts)."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (batch, setting.prompt), device=device,
                           generator=generator)  # fmt: skip
    with autocast(device, dtype):
        generate(model, prompt, 4, top_k=50, generator=generator)  # warm-up
        reset_peak(device)
        start = time.perf_counter()
        out = generate(model, prompt, setting.new_tokens, top_k=50, generator=generator)
        synchronize(device)
    seconds = time.perf_counter() - start
    new = batch * (out.size(1) - setting.prompt)
    note = f"{setting.prompt}-token prompts, {setting.new_tokens} new tokens, top-k 50"
    return [f"generate, batch {batch}", f"{new / seconds:,.0f} tok/s", "-", peak_memory(device),
            note]  # fmt: skip


def transformers_twin(model: LanguageModel, work: Path) -> torch.nn.Module:
    """transformers' model of our model's family (GPT2LMHeadModel, Qwen3ForCausalLM) with its
    weights, through our export; on the same device, in the same dtype."""
    from transformers import AutoModelForCausalLM

    weight = model.lm_head.weight
    folder = save_pretrained(model, work / "transformers-twin")
    twin = AutoModelForCausalLM.from_pretrained(folder, dtype=weight.dtype)
    return twin.to(weight.device).eval()


def transformers_static(twin: torch.nn.Module, prompt: torch.Tensor, new: int) -> torch.Tensor:
    """transformers' greedy generate with a static cache, exactly `new` tokens; on CUDA it
    compiles the decoding forward itself (mode reduce-overhead)."""
    with torch.inference_mode():
        return twin.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                             min_new_tokens=new, do_sample=False, cache_implementation="static",
                             pad_token_id=0)  # fmt: skip


@dataclass(frozen=True)
class Timing:
    """A decoding call measured: its first run (compilation included), the best of the rounds
    after it, and the last output."""

    first: float
    best: float
    out: torch.Tensor


def timing(decode: Callable[[], torch.Tensor], device: torch.device, rounds: int = 3) -> Timing:
    """decode()'s first call and the best of `rounds` more, synchronised."""
    seconds = []
    for _ in range(1 + rounds):
        synchronize(device)
        start = time.perf_counter()
        out = decode()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return Timing(seconds[0], min(seconds[1:]), out)


def same_share(a: torch.Tensor, b: torch.Tensor, prompt: int) -> str:
    """How many of the new tokens two greedy decodings (B, prompt + new) agree on: "all", or a
    share (a near-tie can go either way once the two round differently, as in bfloat16)."""
    share = (a[:, prompt:] == b[:, prompt:]).float().mean().item()
    return "all" if share == 1 else f"{share:.0%}"


def static_decoding_rows(
    model: LanguageModel, batch: int, setting: Setting, work: Path
) -> list[list[str]]:
    """Greedy decoding of `batch` random prompts, the weights in model's dtype: our static step
    (notes: against transformers and our eager loop), then transformers' static cache."""
    device = model.lm_head.weight.device
    generator = torch.Generator(device=device).manual_seed(batch)
    prompt = torch.randint(0, model.config.vocab_size, (batch, setting.prompt), device=device,
                           generator=generator)  # fmt: skip
    n = setting.new_tokens
    theirs: list[Timing] = []  # filled by the transformers row, unless it fails

    def transformers_row() -> list[str]:
        twin = transformers_twin(model, work / f"batch-{batch}")
        theirs.append(timing(lambda: transformers_static(twin, prompt, n), device))
        compiled = "its forward compiled" if device.type == "cuda" else "not compiled off CUDA"
        note = f'generate(cache_implementation="static"), {compiled}; first call '
        return [f"transformers static, batch {batch}", f"{batch * n / theirs[0].best:,.0f} tok/s",
                "-", "-", f"{note}{theirs[0].first:.1f} s"]  # fmt: skip

    def static_row() -> list[str]:
        eager = timing(lambda: generate(model, prompt, n, temperature=0), device)
        reset_peak(device)
        skips = counters["inductor"]["cudagraph_skips"]
        ours = timing(lambda: generate(model, prompt, n, temperature=0, static=True), device)
        skipped = counters["inductor"]["cudagraph_skips"] > skips  # why: TORCH_LOGS=perf_hints
        graphs = "; NO CUDA GRAPH (TORCH_LOGS=perf_hints says why)" if skipped else ""
        tok_s = batch * n / ours.best
        eager_tok_s = batch * n / eager.best
        versus = f"{tok_s * theirs[0].best / (batch * n):.1f}x transformers, " if theirs else ""
        p = setting.prompt
        same = f", as transformers': {same_share(ours.out, theirs[0].out, p)}" if theirs else ""
        dtype_name = str(model.lm_head.weight.dtype).removeprefix("torch.")
        note = (
            f"{versus}{tok_s / eager_tok_s:.1f}x our eager ({eager_tok_s:,.0f} tok/s); greedy, "
            f"{dtype_name}, {setting.prompt}+{n} tokens, first call (compiles) {ours.first:.1f} s; "
            f"tokens as eager: {same_share(ours.out, eager.out, p)}{same}{graphs}"
        )
        return [f"generate static, batch {batch}", f"{tok_s:,.0f} tok/s", "-",
                peak_memory(device), note]  # fmt: skip

    theirs_row = guarded(f"transformers static, batch {batch}", transformers_row)
    return [guarded(f"generate static, batch {batch}", static_row), theirs_row]


def hellaswag_examples(n: int, tok: Tokeniser) -> tuple[list[dict[str, Any]], str]:
    """n HellaSwag items from HELLASWAG_FILE or the shared data, else n synthetic ones (random
    text of about HellaSwag's lengths); and where they came from."""
    found = find_hellaswag_file(None)
    shared = SHARED / "hellaswag" / "hellaswag_val.jsonl"
    path = found or (shared if shared.is_file() else None)
    if path is not None:
        return load_examples(path, limit=n), f"{n} items of {path.name}"
    rng = np.random.default_rng(0)

    def text(tokens: int) -> str:
        return tok.decode([int(i) for i in rng.integers(0, tok.n_vocab, tokens)
                           if i != tok.eot_token])  # fmt: skip

    examples = [
        {"ctx": text(40), "endings": [text(20) for _ in range(4)], "label": int(rng.integers(4))}
        for _ in range(n)
    ]
    return examples, f"{n} synthetic items (no HellaSwag file: set HELLASWAG_FILE)"


def hellaswag_row(
    model: LanguageModel, tok: Tokeniser, setting: Setting, dtype: torch.dtype
) -> list[str]:
    """Items per second of gpt.hellaswag.evaluate (packed scoring) on this model."""
    device = next(model.parameters()).device
    examples, source = hellaswag_examples(setting.hellaswag_items, tok)
    with autocast(device, dtype), torch.no_grad():
        hs.evaluate(model, tok, examples[:4], device=device)  # warm-up
        reset_peak(device)
        start = time.perf_counter()
        result = hs.evaluate(model, tok, examples, device=device)
        synchronize(device)
    seconds = time.perf_counter() - start
    note = f"{source}; acc_norm {result['acc_norm']:.3f}"
    return ["hellaswag", f"{result['n'] / seconds:,.1f} items/s", "-", peak_memory(device), note]


def resume_row(
    name: str, setting: Setting, data: Path, tok: Tokeniser, out: Path, **over: Any
) -> list[str]:
    """Run N + K steps saving at N; resume from step N; are steps N..N+K-1 the same?"""
    n, k = setting.resume
    cfg = run_config(setting, data, tok, out, max_steps=n + k, save_every=n, **over)
    quietly(lambda: train(cfg))
    whole = [e["value"] for e in train_events(out)][n:]
    resumed_cfg = run_config(setting, data, tok, out, max_steps=n + k, save_every=n,
                             resume=str(rundir.step_dir(out, n)), **over)  # fmt: skip
    quietly(lambda: train(resumed_cfg))
    again = [e["value"] for e in train_events(out)][n:]
    same = again == whole
    worst = max(abs(a - b) for a, b in zip(again, whole, strict=True))
    verdict = "identical" if same else f"differ (max {worst:.2e})"
    note = f"saved after step {n}, {k} more steps; losses of steps {n}-{n + k - 1} compared"
    return [name, verdict, "-", "-", note]


def guarded(name: str, make_row: Callable[[], list[str]]) -> list[str]:
    """make_row(), or a row saying why it failed (the traceback goes to stderr), so that one
    failure does not cost the other rows of a GPU session."""
    try:
        return make_row()
    except Exception as error:  # noqa: BLE001 - reported in the table and on stderr
        traceback.print_exc()
        return [name, "failed", "-", "-", f"{type(error).__name__}: {error}"[:120]]


def inference_rows(
    model: LanguageModel, tok: Tokeniser, setting: Setting, dtype: torch.dtype, work: Path
) -> list[list[str]]:
    """Generation at batch 1 and 8 (eager under autocast; static and transformers' static with
    the weights in `dtype`), and HellaSwag, with the trained model."""
    rows = [
        guarded(f"generate, batch {b}", lambda b=b: generation_row(model, b, setting, dtype))
        for b in (1, 8)
    ]
    cast = copy.deepcopy(model).to(dtype)  # the static rows' weights: bfloat16 on the GPU
    for b in (1, 8):
        rows += static_decoding_rows(cast, b, setting, work)
    del cast
    rows.append(guarded("hellaswag", lambda: hellaswag_row(model, tok, setting, dtype)))
    return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, in seconds")
    parser.add_argument(
        "--recipe",
        choices=("gpt2", "modern"),
        default="gpt2",
        help="gpt2 (AdamW) or modern (Qwen3 layout, Muon + AdamW, WSD) at the same shape",
    )
    parser.add_argument(
        "--peak-flops", type=float, default=None, help="the GPU's peak FLOP/s, if not a known card"
    )
    parser.add_argument("--profile", action="store_true", help="also profile a compiled step")
    parser.add_argument(
        "--levers", action="store_true", help="only the compiled step, with each lever alone"
    )
    parser.add_argument(
        "--fused-adamw",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="AdamW's fused kernels (default: the package's choice, fused)",
    )
    parser.add_argument(
        "--compile-ns", action="store_true", help="compile Muon's Newton-Schulz (modern recipe)"
    )
    parser.add_argument(
        "--micro-batch",
        type=batch_size_arg,
        default=None,
        metavar="N|auto",
        help="sequences per micro-batch (default: the setting's); the tokens of a step kept",
    )
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        raise UserError("no CUDA GPU here: run on a GPU machine, or --smoke for the CPU check")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setting = SMOKE if args.smoke else GPU
    if args.recipe == "modern":  # the same batch and shape, the modern family and optimizers
        modern = {"gpt2": "modern", "tiny": "modern-tiny"}[setting.model]
        setting = dataclasses.replace(setting, model=modern)
    device = torch.device(setting.device)
    dtype = torch.bfloat16 if setting.dtype == "bfloat16" else torch.float32
    over: dict[str, Any] = {} if args.peak_flops is None else {"peak_flops": args.peak_flops}
    if args.recipe == "modern":
        over |= MODERN_RECIPE
    if args.micro_batch is not None:
        over["batch_size"] = args.micro_batch
    if args.smoke:  # trace the static step without inductor's code generation (minutes on CPU)
        static_decode.BACKEND = "eager"
    print(f"machine: {machine()}")
    with (
        tempfile.TemporaryDirectory(prefix="gpt-bench-gpu-") as tmp,
        levers(args.fused_adamw, args.compile_ns),
    ):
        work = Path(tmp)
        tok = tokeniser_for(args.smoke, work)
        data = synthetic_data(setting, tok, work)
        if args.levers:
            rows = lever_rows(args, setting, data, tok, work, device, over)
            print(table(["run", "throughput", "MFU", "peak memory", "notes"], rows), flush=True)
            if args.profile:
                print(profile_section(setting, data, tok, work, device, over), flush=True)
            return 0
        compiled = run_config(setting, data, tok, work / "compiled",
                              max_steps=setting.compiled_steps, compile=True, **over)  # fmt: skip
        eager = run_config(setting, data, tok, work / "eager", max_steps=setting.eager_steps,
                           compile=False, **over)  # fmt: skip
        rows = [training_row("train, compiled", setting, compiled, device)]
        rows.append(guarded("train, compiled, --deterministic",
                            lambda: deterministic_row(setting, compiled, device)))  # fmt: skip
        rows.append(guarded("train, eager", lambda: training_row("train, eager", setting, eager,
                                                                   device)))  # fmt: skip
        # before the resume rows, the last of which leaves deterministic kernels on
        profile = profile_section(setting, data, tok, work, device, over) if args.profile else ""
        model, _ = ckpt.load_model_dir(rundir.latest_checkpoint(work / "compiled"), device=device)
        rows += inference_rows(model, tok, setting, dtype, work)
        del model
        for name, exact in (("save + resume", False), ("save + resume, --deterministic", True)):
            rows.append(guarded(name, lambda name=name, exact=exact: resume_row(
                name, setting, data, tok, work / f"resume-{exact}", compile=True,
                deterministic=exact, **over)))  # fmt: skip
        print(table(["run", "throughput", "MFU", "peak memory", "notes"], rows), flush=True)
        if profile:
            print(profile, flush=True)
    return 0


if __name__ == "__main__":
    run(main)
