"""Sample text from a model: one of our checkpoints, a Hugging Face GPT-2 directory or hub name.

    python inference.py --model runs/demo/export --prompt "The" --max-tokens 64
    python inference.py --model gpt2 --prompt "Hello, I'm a language model," --stream

The tokeniser comes from the checkpoint (ours), the bundled tokeniser.tkn of an export, or is
GPT-2's; --tokeniser overrides it. Sampling stops at <|endoftext|>. With --stream, samples are
generated one after the other and printed token by token.
"""

from __future__ import annotations

import argparse
import codecs
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from gpt.checkpoint import is_checkpoint, load_model_dir
from gpt.cli import ArgumentParser, UserError, run
from gpt.data.tokeniser import Tokeniser, add_tokeniser_args, get_tokeniser
from gpt.hf import from_pretrained, hf_tokeniser_spec
from gpt.model.gpt2 import GPT, check_sampling

DEFAULT_PROMPT = "Hello, I'm a language model,"


def pick_device(name: str) -> torch.device:
    """ "auto" -> cuda, else mps, else cpu; otherwise the named device, which must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use auto, cuda, mps or cpu") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: MPS is not available")
    if device.type not in ("cuda", "mps", "cpu"):
        raise UserError(f"unsupported device {name!r}: use auto, cuda, mps or cpu")
    return device


def load(model_arg: str, tokeniser_arg: str | None, device: torch.device) -> tuple[GPT, Tokeniser]:
    """The model and its tokeniser (explicit --tokeniser wins over the model's own)."""
    if is_checkpoint(model_arg):
        model, meta = load_model_dir(model_arg, device)
        spec = meta.get("tokeniser") or "gpt2"
    else:
        model = from_pretrained(model_arg).to(device)
        spec = hf_tokeniser_spec(model_arg) if Path(model_arg).is_dir() else "gpt2"
    tok = get_tokeniser(tokeniser_arg or spec)
    if tok.n_vocab > model.config.vocab_size:
        raise UserError(
            f"tokeniser {tok.name} has {tok.n_vocab} tokens but the model only "
            f"{model.config.vocab_size}: pass the model's tokeniser with --tokeniser"
        )
    return model.eval(), tok


def prompt_ids(tok: Tokeniser, prompt: str) -> list[int]:
    """The prompt's tokens (special tokens allowed); an empty prompt starts a new document."""
    return tok.encode(prompt, allowed_special="all") or [tok.eot_token]


def sample(
    model: GPT,
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
    device = model.transformer.wte.weight.device
    ids = prompt_ids(tok, prompt)
    idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)
    out = model.generate(
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
    model: GPT,
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
    device = model.transformer.wte.weight.device
    idx = torch.tensor([prompt_ids(tok, prompt)], dtype=torch.long, device=device)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    steps = model.generate_stream(
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


def make_generator(device: torch.device, seed: int | None) -> torch.Generator | None:
    """A seeded generator on device, or None (the global RNG) without a seed."""
    return None if seed is None else torch.Generator(device=device).manual_seed(seed)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description="Sample text from a GPT-2 model.")
    parser.add_argument(
        "--model",
        required=True,
        help="our checkpoint directory, a Hugging Face GPT-2 directory, or a hub name "
        "(gpt2, gpt2-medium, gpt2-large, gpt2-xl)",
    )
    parser.add_argument(
        "--prompt", default=DEFAULT_PROMPT, help=f"text to continue (default: {DEFAULT_PROMPT!r})"
    )
    parser.add_argument(
        "--max-tokens", type=int, default=64, help="new tokens per sample (default: 64)"
    )
    parser.add_argument("--temperature", type=float, default=1.0, help="0 is greedy (default: 1.0)")
    parser.add_argument(
        "--top-k",
        type=int,
        default=50,
        help="sample among the k most likely tokens, 0 for all (default: 50)",
    )
    parser.add_argument(
        "--top-p",
        type=float,
        default=None,
        help="nucleus sampling: keep this much probability mass (default: off)",
    )
    parser.add_argument(
        "--num-samples", type=int, default=2, help="continuations to print (default: 2)"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of the sampling RNG (default: none)"
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="cuda, mps, cpu or auto: the first available (default: auto)",
    )
    parser.add_argument("--stream", action="store_true", help="print tokens as they come")
    add_tokeniser_args(parser)
    parser.set_defaults(tokeniser=None)  # None: the model's own tokeniser
    for action in parser._actions:
        if action.dest == "tokeniser":
            action.help = "'gpt2' or a .tkn file (default: the model's own, else gpt2)"
    args = parser.parse_args(argv)
    if args.num_samples < 1:
        raise UserError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.top_k < 0:
        raise UserError(f"--top-k must be >= 0, got {args.top_k}")
    check_sampling(args.temperature, args.top_k or None, args.top_p, args.max_tokens)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device)
    model, tok = load(args.model, args.tokeniser, device)
    settings = dict(temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p)
    if args.stream:
        generator = make_generator(device, args.seed)
        for i in range(args.num_samples):
            print(f"--- sample {i + 1}", flush=True)
            sys.stdout.write(args.prompt)
            for piece in stream(
                model, tok, args.prompt, max_tokens=args.max_tokens, generator=generator, **settings
            ):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
        return 0
    texts = sample(
        model,
        tok,
        args.prompt,
        max_tokens=args.max_tokens,
        num_samples=args.num_samples,
        seed=args.seed,
        **settings,
    )
    for i, text in enumerate(texts):
        print(f"--- sample {i + 1}\n{text}")
    return 0


if __name__ == "__main__":
    run(main)
