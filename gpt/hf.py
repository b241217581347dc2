"""Hugging Face interoperability: GPT-2 conversion both ways, and the one model loader.

    python -m gpt.hf export runs/demo/checkpoints/best runs/demo/export

Our parameter names are Hugging Face's (`transformer.h.0.attn.c_attn.weight`, ...), so the
conversion is a key copy plus the transposition of the four Conv1D weights listed in TRANSPOSED
(Hugging Face stores them as (in, out), nn.Linear as (out, in)). The lm_head is tied to wte on
both sides and is never stored. Weights are read from safetensors, or from a PyTorch .bin with
torch.load(weights_only=True); nothing is unpickled.

An export is what `transformers.GPT2LMHeadModel.from_pretrained(dir)` expects: config.json
(model_type gpt2, the real vocabulary size, n_positions = block_size), model.safetensors (the
real vocabulary rows only), the tokenizer files (gpt/hf_tokenizer.py) and a model card,
README.md (gpt/hf_card.py).

`load_model(spec)` is how every command opens a model: one of our checkpoint directories, a
Hugging Face directory or a hub name (inference.py, hellaswag.py, the export command).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from gpt.checkpoint import is_checkpoint, load_model_dir
from gpt.cli import ArgumentParser, UserError, add_dataclass_args, explicit_values, option, run
from gpt.config import GPTConfig
from gpt.data.bpe import TokeniserError
from gpt.data.tokeniser import Tokeniser, get_tokeniser
from gpt.fsio import atomic_path, read_json_object, write_json_atomic
from gpt.hf_card import RunFacts, push_to_hub, run_facts, write_model_card
from gpt.hf_hub import HUB_NAMES, HUB_ORG, ModelNotFoundError, download_hub_model
from gpt.hf_tokenizer import hf_tokeniser_spec, write_tokeniser_files
from gpt.model.gpt2 import GPT

# Conv1D weights, stored (in, out) by Hugging Face and (out, in) by nn.Linear.
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers some GPT-2 checkpoints carry (the causal mask), not weights.
IGNORED = (".attn.bias", ".attn.masked_bias")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SAFETENSORS_INDEX = "model.safetensors.index.json"


class NotGPT2Error(UserError):
    """The checkpoint is not a GPT-2 model this code can run (other type, damaged, variant)."""


# --------------------------------------------------------------------------------- loading


def config_from_hf(hf: dict[str, Any], where: str) -> GPTConfig:
    """Our GPTConfig from a Hugging Face GPT-2 config.json dict; NotGPT2Error for others."""
    if hf.get("model_type") != "gpt2":
        raise NotGPT2Error(f"{where}: model_type is {hf.get('model_type')!r}, not a GPT-2 model")
    n_embd = hf.get("n_embd", 768)
    unsupported = {
        "n_inner": hf.get("n_inner") not in (None, 4 * n_embd),
        "activation_function": hf.get("activation_function", "gelu_new")
        not in ("gelu_new", "gelu_pytorch_tanh"),
        "scale_attn_weights": not hf.get("scale_attn_weights", True),
        "scale_attn_by_inverse_layer_idx": hf.get("scale_attn_by_inverse_layer_idx", False),
        "add_cross_attention": hf.get("add_cross_attention", False),
        "tie_word_embeddings": not hf.get("tie_word_embeddings", True),
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        detail = ", ".join(f"{k}={hf.get(k)!r}" for k in bad)
        raise NotGPT2Error(f"{where}: unsupported GPT-2 variant ({detail})")
    try:
        return GPTConfig(
            block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
            vocab_size=hf.get("vocab_size", 50257),
            n_layer=hf.get("n_layer", 12),
            n_head=hf.get("n_head", 12),
            n_embd=n_embd,
            layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        )
    except (TypeError, ValueError) as e:
        raise NotGPT2Error(f"{where}: invalid GPT-2 config ({e})") from None


def state_from_hf(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face GPT-2 weights (GPT2LMHeadModel or bare GPT2Model names) -> our names."""
    out: dict[str, torch.Tensor] = {}
    for key, value in hf_state.items():
        name = key if key.startswith(("transformer.", "lm_head.")) else "transformer." + key
        if name.endswith(IGNORED):
            continue
        if name == "lm_head.weight":
            wte = hf_state.get("transformer.wte.weight", hf_state.get("wte.weight"))
            if wte is not None and not torch.equal(wte, value):
                raise NotGPT2Error("lm_head.weight differs from wte: untied heads are unsupported")
            continue
        out[name] = value.t() if name.endswith(TRANSPOSED) else value
    return out


def state_to_hf(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under Hugging Face names: Conv1D weights transposed, no padded vocab rows,
    no lm_head (tied), contiguous CPU tensors."""
    vocab = model.config.vocab_size
    out = {}
    for name, value in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        value = value.detach()
        if name == "transformer.wte.weight":
            value = value[:vocab]
        elif name.endswith(TRANSPOSED):
            value = value.t()
        out[name] = value.cpu().contiguous()
    return out


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory: model.safetensors (or its shards listed in
    model.safetensors.index.json), else pytorch_model.bin through weights_only=True."""
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = [folder / s for s in sorted(set(weight_map.values()))]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
            raise NotGPT2Error(f"{index}: damaged index ({type(e).__name__}: {e})") from None
    elif (folder / WEIGHT_FILES[0]).is_file():
        files = [folder / WEIGHT_FILES[0]]
    elif (folder / WEIGHT_FILES[1]).is_file():
        try:
            state = torch.load(folder / WEIGHT_FILES[1], map_location="cpu", weights_only=True)
        except Exception as e:  # unpickling refused or damaged file
            raise NotGPT2Error(f"{folder / WEIGHT_FILES[1]}: cannot read weights ({e})") from None
        return dict(state)
    else:
        raise ModelNotFoundError(f"{folder}: no {' or '.join(WEIGHT_FILES)}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    state[key] = st.get_tensor(key)
        except Exception as e:  # missing shard, damaged header
            raise NotGPT2Error(f"{f}: cannot read weights ({e})") from None
    return state


def load_hf_dir(folder: Path) -> GPT:
    """A GPT from a local Hugging Face GPT-2 directory (config.json + weights), float32."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelNotFoundError(f"{folder}: no config.json (not a Hugging Face model directory)")
    hf_config = read_json_object(config_file, NotGPT2Error)
    config = config_from_hf(hf_config, str(config_file))
    state = {k: v.float().contiguous() for k, v in state_from_hf(read_weights(folder)).items()}
    with torch.device("meta"):
        model = GPT(config)  # no memory and no initialisation: the weights are assigned below
    expected = {k: v.shape for k, v in model.state_dict().items() if k != "lm_head.weight"}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k])
    if missing or unexpected or wrong:
        raise NotGPT2Error(
            f"{folder}: weights do not match config.json (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, wrong shape {wrong[:3]})"
        )
    model.load_state_dict(state, strict=False, assign=True)
    model.lm_head.weight = model.transformer.wte.weight  # re-tie to the assigned tensor
    return model.eval()


def from_pretrained(name_or_dir: str | Path) -> GPT:
    """Our GPT from a Hugging Face GPT-2 directory or hub name (gpt2, gpt2-medium, gpt2-large,
    gpt2-xl, optionally prefixed openai-community/), float32."""
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return load_hf_dir(path)
    name = str(name_or_dir)
    if name.removeprefix(f"{HUB_ORG}/") in HUB_NAMES:
        return load_hf_dir(download_hub_model(name))
    raise ModelNotFoundError(f"{name}: no such model directory (hub names: {', '.join(HUB_NAMES)})")


# --------------------------------------------------------------------------------- saving


def hf_config(model: GPT, eos_token: int | None) -> dict[str, Any]:
    """config.json of a GPT2LMHeadModel with our model's shape and real vocabulary."""
    cfg = model.config
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_ctx": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": cfg.layer_norm_eps,
        "resid_pdrop": 0.0,  # we train without dropout
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": eos_token,
        "eos_token_id": eos_token,
        "dtype": str(model.transformer.wte.weight.dtype).removeprefix("torch."),
    }


def save_pretrained(
    model: GPT,
    out_dir: str | Path,
    tokeniser: Tokeniser | str | None = None,
    facts: RunFacts | None = None,
) -> Path:
    """Write `out_dir` as a Hugging Face GPT-2 model directory (each file atomically).

    tokeniser: a Tokeniser or a spec ("gpt2" or a .tkn path); its files are written too and its
    end-of-text id becomes bos/eos_token_id. facts: how the model was trained, for the model
    card (gpt/hf_card.py's run_facts).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = get_tokeniser(tokeniser) if isinstance(tokeniser, str) else tokeniser
    if tok is not None and tok.n_vocab > model.config.vocab_size:
        raise TokeniserError(
            f"tokeniser {tok.name} has {tok.n_vocab} tokens, the model only "
            f"{model.config.vocab_size}"
        )
    state = state_to_hf(model)
    with atomic_path(out_dir / WEIGHT_FILES[0]) as tmp:
        save_file(state, tmp, metadata={"format": "pt"})
    if tok is not None:
        write_tokeniser_files(out_dir, tok, model.config.block_size)
    eos = tok.eot_token if tok is not None else None
    write_json_atomic(out_dir / "config.json", hf_config(model, eos))
    write_model_card(out_dir, model, tok, facts)
    return out_dir


# --------------------------------------------------------------------------------- any model


@dataclass
class LoadedModel:
    """A model ready to run, with how to tokenise for it."""

    name: str
    """The spec it was loaded from."""
    kind: Literal["ours", "transformers"]
    """Which code runs it: our GPT, or a transformers causal LM."""
    model: nn.Module
    """Our GPT (kind "ours") or a transformers model (kind "transformers"), in eval mode."""
    tokeniser: Tokeniser | None
    """Our tokeniser for our GPT; None for a transformers model (see encode_batch)."""
    encode_batch: Callable[[list[str]], list[list[int]]]
    """Texts -> token ids, no special tokens added."""
    max_len: int
    """Positions the model reads at most."""
    prefix: list[int]
    """Tokens that start a document (a BOS token, for tokenizers that add one)."""
    empty_ctx: int
    """The token that stands for an empty text (end-of-text or BOS)."""


def load_model(
    spec: str,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    *,
    tokeniser: str | None = None,
    any_causal_lm: bool = False,
) -> LoadedModel:
    """One of our checkpoint directories, a Hugging Face directory or a hub name, on `device`.

    Our checkpoints run in our GPT with the tokeniser they name (checked against the fingerprint
    they were trained with). A Hugging Face GPT-2 (a directory, or a hub name of HUB_NAMES) is
    converted to our GPT, with the .tkn file an export bundles, else GPT-2's tokeniser; with
    `any_causal_lm`, a Hugging Face model of any causal-LM type (and any hub name) runs in
    transformers, with its own tokenizer, its weights in `dtype`. Our GPT loads in float32 (the
    caller autocasts). `tokeniser`: a spec that replaces the model's own (our GPT only).
    """
    if is_checkpoint(spec):
        model, meta = load_model_dir(spec, device)
        tok = get_tokeniser(tokeniser or meta.get("tokeniser") or "gpt2")
        trained_with = meta.get("tokeniser_fingerprint")
        if tokeniser is None and trained_with and trained_with != tok.fingerprint:
            raise UserError(f"{spec}: the tokeniser {tok.spec} is not the one it was trained with")
        return _ours(spec, model, tok)
    if any_causal_lm:
        return _transformers_model(spec, device, dtype)
    model = from_pretrained(spec).to(device)
    own = hf_tokeniser_spec(spec) if Path(spec).is_dir() else "gpt2"
    return _ours(spec, model, get_tokeniser(tokeniser or own))


def _ours(name: str, model: GPT, tok: Tokeniser) -> LoadedModel:
    if tok.n_vocab > model.config.vocab_size:
        raise UserError(
            f"{name}: tokeniser {tok.name} has {tok.n_vocab} tokens but the model only "
            f"{model.config.vocab_size}"
        )
    return LoadedModel(
        name=name,
        kind="ours",
        model=model.eval(),
        tokeniser=tok,
        encode_batch=tok.encode_ordinary_batch,
        max_len=model.config.block_size,
        prefix=[],
        empty_ctx=tok.eot_token,
    )


def _transformers_model(name: str, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """A Hugging Face causal LM (directory or hub name) and its own tokenizer.

    Texts get the tokenizer's BOS token as `prefix` exactly when its default encoding adds one
    (OPT, Llama: yes; GPT-2, Pythia: no).
    """
    p = Path(name)
    if p.exists() and not (p / "config.json").is_file():
        raise UserError(f"{name}: neither one of our checkpoints nor a Hugging Face model folder")
    if not p.exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise UserError(f"no such model directory: {name}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load Hugging Face model {name!r}: {first}") from None
    bos = tokenizer.bos_token_id
    adds_bos = bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
    cfg = model.config
    max_len = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048)

    def encode_batch(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]

    return LoadedModel(
        name=name,
        kind="transformers",
        model=model.to(device).eval(),
        tokeniser=None,
        encode_batch=encode_batch,
        max_len=int(max_len),
        prefix=[bos] if adds_bos else [],
        empty_ctx=bos if bos is not None else (tokenizer.eos_token_id or 0),
    )


# --------------------------------------------------------------------------------- command


@dataclass
class ExportOptions:
    """python -m gpt.hf export: which checkpoint, and where to."""

    checkpoint: str = option(positional=True)
    """Our checkpoint or model directory (or a Hugging Face one)."""
    out: str = option(positional=True)
    """Output directory (created; files in it are replaced)."""
    push_to_hub: str | None = None
    """Also upload the directory to this hub model repository (created if needed), e.g. me/demo."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m gpt.hf", description="Hugging Face interoperability.")
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser(
        "export",
        help="write one of our checkpoints as a Hugging Face GPT-2 directory",
        description="Write one of our checkpoints as a Hugging Face GPT-2 directory.",
    )
    add_dataclass_args(export, ExportOptions)
    opts = ExportOptions(**explicit_values(parser.parse_args(argv), ExportOptions))
    lm = load_model(opts.checkpoint, torch.device("cpu"))
    facts = run_facts(opts.checkpoint) if is_checkpoint(opts.checkpoint) else None
    out = save_pretrained(lm.model, opts.out, lm.tokeniser, facts)  # type: ignore[arg-type]
    print(f"exported {opts.checkpoint} ({lm.model.num_params():,} parameters) to {out}")
    if opts.push_to_hub is not None:
        print(f"pushed {out} to {push_to_hub(out, opts.push_to_hub)}")
    return 0


if __name__ == "__main__":
    run(main)
