"""Sample text from a model: one of our checkpoints, a Hugging Face GPT-2 or Qwen3 directory, or a
hub name.

    python inference.py --model runs/demo/export --prompt "The" --max-tokens 64
    python inference.py --model gpt2 --prompt "Hello, I'm a language model," --stream
    python inference.py --model runs/demo/export --num-samples 8 --dtype bfloat16

The model is opened by gpt.hf.load_model and sampled by gpt.model.generate. The tokeniser comes
from the checkpoint (ours), the bundled tokeniser.tkn of an export, or is GPT-2's; --tokeniser
overrides it. Sampling stops at <|endoftext|>. With --stream, samples are generated one after
the other and printed token by token.
"""

from __future__ import annotations

import codecs
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from gpt.capability import describe, dtype_choice, fast_dtype
from gpt.cli import UserError, parse_options, run
from gpt.data.tokeniser import Tokeniser, TokeniserOptions, use_gpt2_bpe_dir
from gpt.distributed import resolve_device
from gpt.hf import load_model
from gpt.model.base import LanguageModel
from gpt.model.cpu_decode import describe_layout, layout_for
from gpt.model.generate import check_sampling, generate, generate_stream


@dataclass(kw_only=True)  # a required field after the tokeniser's defaulted ones
class InferenceOptions(TokeniserOptions):
    """inference.py: the model, the prompt and how to sample."""

    model: str
    """Our checkpoint directory, a Hugging Face GPT-2 or Qwen3 directory (our exports of
    either family), or a hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl, org/name)."""
    tokeniser: str | None = None
    """'gpt2' or a .tkn file (None: the model's own, else gpt2)."""
    prompt: str = "Hello, I'm a language model,"
    """Text to continue."""
    max_tokens: int = 64
    """New tokens per sample."""
    temperature: float = 1.0
    """0 is greedy."""
    top_k: int = 50
    """Sample among the k most likely tokens, 0 for all."""
    top_p: float | None = None
    """Nucleus sampling: keep this much probability mass (None: off)."""
    num_samples: int = 2
    """Continuations to print."""
    seed: int | None = None
    """Seed of the sampling RNG (None: none)."""
    device: str = "auto"
    """cuda, mps, cpu or auto: the first available."""
    dtype: Literal["float32", "bfloat16", "auto"] = "float32"
    """Weights, activations and KV cache: bfloat16 halves the memory and the bytes each token
    reads (faster on GPUs and on CPUs with bfloat16 matrix units, emulated and slow on others;
    greedy choices may differ where logits nearly tie); auto: bfloat16 where the device
    multiplies it natively, float32 elsewhere."""
    stream: bool = False
    """Print tokens as they come."""


def check(opts: InferenceOptions) -> None:
    """Refuse settings no run can use, before the model is loaded."""
    if opts.num_samples < 1:
        raise UserError(f"--num-samples must be >= 1, got {opts.num_samples}")
    if opts.top_k < 0:
        raise UserError(f"--top-k must be >= 0, got {opts.top_k}")
    check_sampling(opts.temperature, opts.top_k or None, opts.top_p, opts.max_tokens)


def decoding_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype --dtype names ("auto": the device's fast dtype)."""
    return fast_dtype(device) if name == "auto" else getattr(torch, name)


def announce_decoding(model: LanguageModel, device: torch.device, batch_size: int) -> None:
    """Say once on stderr what the device does natively and how decoding batch_size sequences
    will use it, e.g. "cpu: AMD EPYC, AVX2, no native bfloat16 -> decoding in float32, every
    weight split over 2 threads"."""
    dtype = dtype_choice(model.lm_head.weight.dtype, device)
    layout = describe_layout(layout_for(model, batch_size))
    print(f"{describe(device)} -> decoding in {dtype}, {layout}", file=sys.stderr)


def prompt_ids(tok: Tokeniser, prompt: str) -> list[int]:
    """The prompt's tokens (special tokens allowed); an empty prompt starts a new document."""
    return tok.encode(prompt, allowed_special="all") or [tok.eot_token]


def make_generator(device: torch.device, seed: int | None) -> torch.Generator | None:
    """A seeded generator on device, or None (the global RNG) without a seed."""
    return None if seed is None else torch.Generator(device=device).manual_seed(seed)


def sample(
    model: LanguageModel,
    tok: Tokeniser,
    prompt: str,
    *,
    max_tokens: int,
    num_samples: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
) -> list[str]:
    """num_samples continuations of prompt (as one batch), each cut at <|endoftext|>."""
    device = model.lm_head.weight.device
    ids = prompt_ids(tok, prompt)
    idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)
    out = generate(
        model,
        idx,
        max_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_token=tok.eot_token,
        generator=make_generator(device, seed),
    )
    texts = []
    for row in out[:, len(ids) :].tolist():
        new = row[: row.index(tok.eot_token)] if tok.eot_token in row else row
        texts.append(prompt + tok.decode(new))
    return texts


def stream(
    model: LanguageModel,
    tok: Tokeniser,
    prompt: str,
    *,
    max_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[str]:
    """The text of one continuation, piece by piece as tokens arrive (UTF-8 safe)."""
    device = model.lm_head.weight.device
    idx = torch.tensor([prompt_ids(tok, prompt)], dtype=torch.long, device=device)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    steps = generate_stream(
        model,
        idx,
        max_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_token=tok.eot_token,
        generator=generator,
    )
    for token in steps:
        t = int(token[0])
        if t == tok.eot_token:
            break
        yield decoder.decode(tok.token_bytes(t))
    yield decoder.decode(b"", final=True)


def print_streamed(
    model: LanguageModel, tok: Tokeniser, opts: InferenceOptions, device: torch.device
) -> None:
    """--stream: each sample printed token by token, one after the other."""
    generator = make_generator(device, opts.seed)
    settings = dict(temperature=opts.temperature, top_k=opts.top_k or None, top_p=opts.top_p)
    for i in range(opts.num_samples):
        print(f"--- sample {i + 1}", flush=True)
        sys.stdout.write(opts.prompt)
        for piece in stream(
            model, tok, opts.prompt, max_tokens=opts.max_tokens, generator=generator, **settings
        ):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_options(
        InferenceOptions,
        argv,
        prog="inference.py",
        description="Sample text from a GPT-2 or Qwen3-layout model.",
    )
    check(opts)
    use_gpt2_bpe_dir(opts.gpt2_bpe_dir)
    device = resolve_device(opts.device)
    lm = load_model(opts.model, device, tokeniser=opts.tokeniser)
    assert isinstance(lm.model, LanguageModel) and lm.tokeniser is not None  # kind "ours"
    lm.model.to(decoding_dtype(opts.dtype, device))
    announce_decoding(lm.model, device, 1 if opts.stream else opts.num_samples)
    if opts.stream:
        print_streamed(lm.model, lm.tokeniser, opts, device)
        return 0
    texts = sample(
        lm.model,
        lm.tokeniser,
        opts.prompt,
        max_tokens=opts.max_tokens,
        num_samples=opts.num_samples,
        temperature=opts.temperature,
        top_k=opts.top_k or None,
        top_p=opts.top_p,
        seed=opts.seed,
    )
    for i, text in enumerate(texts):
        print(f"--- sample {i + 1}\n{text}")
    return 0


if __name__ == "__main__":
    run(main)
