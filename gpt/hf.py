"""Hugging Face interoperability for both model families, and the one model loader.

    python -m gpt.hf export runs/demo/checkpoints/best runs/demo/export

Each family maps its config.json and weights in its own module, chosen by the model's arch on
export and by config.json's model_type on import (CONVERTERS): gpt/hf_gpt2.py for GPT-2
(`GPT2LMHeadModel`), gpt/hf_qwen3.py for the Qwen3 layout (`Qwen3ForCausalLM`). Everything else
is written once, here: reading weights (safetensors, its shards, or a PyTorch .bin through
torch.load(weights_only=True); nothing is unpickled), building the model, and an export's
directory: config.json, model.safetensors (the real vocabulary rows only), the tokenizer files
(gpt/hf_tokenizer.py) and a model card, README.md (gpt/hf_card.py). transformers'
`AutoModelForCausalLM.from_pretrained(dir)` loads an export of either family with no custom code.

`load_model(spec)` is how every command opens a model: one of our checkpoint directories, a
Hugging Face directory or a hub name (inference.py, hellaswag.py, the export command).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from gpt import hf_gpt2, hf_qwen3
from gpt.checkpoint import is_checkpoint, load_model_dir
from gpt.cli import ArgumentParser, UserError, add_dataclass_args, explicit_values, option, run
from gpt.data.bpe import TokeniserError
from gpt.data.tokeniser import Tokeniser, get_tokeniser
from gpt.fsio import atomic_path, read_json_object, write_json_atomic
from gpt.hf_card import RunFacts, exported_params, push_to_hub, run_facts, write_model_card
from gpt.hf_hub import (
    HUB_NAMES,
    ModelNotFoundError,
    UnsupportedModelError,
    download_hub_model,
    is_hub_name,
)
from gpt.hf_tokenizer import hf_tokeniser_spec, write_tokeniser_files
from gpt.model.base import LanguageModel
from gpt.model.families import build_model

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SAFETENSORS_INDEX = "model.safetensors.index.json"
# The families' mappings (config.json and weights, both ways), by model_type = our arch.
CONVERTERS: dict[str, ModuleType] = {"gpt2": hf_gpt2, "qwen3": hf_qwen3}


# --------------------------------------------------------------------------------- loading


def converter(hf: dict[str, Any], where: str) -> ModuleType:
    """The mapping of a Hugging Face config.json's model_type; UnsupportedModelError for others."""
    model_type = hf.get("model_type")
    if model_type not in CONVERTERS:
        raise UnsupportedModelError(
            f"{where}: model_type is {model_type!r}, not a GPT-2 or Qwen3 model"
        )
    return CONVERTERS[model_type]


def state_to_hf(model: LanguageModel) -> dict[str, torch.Tensor]:
    """Our weights under Hugging Face names for the model's family (no padded vocabulary rows,
    no tied lm_head), contiguous CPU tensors."""
    return CONVERTERS[model.config.arch].state_to_hf(model)


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory: model.safetensors (or its shards listed in
    model.safetensors.index.json), else pytorch_model.bin through weights_only=True."""
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = [folder / s for s in sorted(set(weight_map.values()))]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
            raise UnsupportedModelError(
                f"{index}: damaged index ({type(e).__name__}: {e})"
            ) from None
    elif (folder / WEIGHT_FILES[0]).is_file():
        files = [folder / WEIGHT_FILES[0]]
    elif (folder / WEIGHT_FILES[1]).is_file():
        try:
            state = torch.load(folder / WEIGHT_FILES[1], map_location="cpu", weights_only=True)
        except Exception as e:  # unpickling refused or damaged file
            raise UnsupportedModelError(
                f"{folder / WEIGHT_FILES[1]}: cannot read weights ({e})"
            ) from None
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
            raise UnsupportedModelError(f"{f}: cannot read weights ({e})") from None
    return state


def load_hf_dir(folder: Path) -> LanguageModel:
    """Our model from a local Hugging Face GPT-2 or Qwen3 directory (config.json + weights),
    float32."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelNotFoundError(f"{folder}: no config.json (not a Hugging Face model directory)")
    hf_config = read_json_object(config_file, UnsupportedModelError)
    family = converter(hf_config, str(config_file))
    config = family.config_from_hf(hf_config, str(config_file))
    weights = family.state_from_hf(read_weights(folder), config, str(folder))
    state = {k: v.float().contiguous() for k, v in weights.items()}
    with torch.device("meta"):
        model = build_model(config)  # no memory and no initialisation: weights assigned below
    expected = {k: v.shape for k, v in model.state_dict().items() if k not in model.tied_alias}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k])
    if missing or unexpected or wrong:
        raise UnsupportedModelError(
            f"{folder}: weights do not match config.json (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, wrong shape {wrong[:3]})"
        )
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()  # re-tie a tied head to the assigned embedding
    return model.eval()


def hf_folder(name_or_dir: str | Path) -> Path:
    """The local folder of a Hugging Face directory or hub name (downloaded once)."""
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_dir)
    if is_hub_name(name):
        return download_hub_model(name)
    raise ModelNotFoundError(
        f"{name}: no such model directory (hub names: {', '.join(HUB_NAMES)} or org/name)"
    )


def from_pretrained(name_or_dir: str | Path) -> LanguageModel:
    """Our model from a Hugging Face GPT-2 or Qwen3 directory or hub name (gpt2, gpt2-medium,
    gpt2-large, gpt2-xl, optionally prefixed openai-community/, or an org/name repository),
    float32."""
    return load_hf_dir(hf_folder(name_or_dir))


# --------------------------------------------------------------------------------- saving


def save_pretrained(
    model: LanguageModel,
    out_dir: str | Path,
    tokeniser: Tokeniser | str | None = None,
    facts: RunFacts | None = None,
) -> Path:
    """Write `out_dir` as a Hugging Face model directory of the model's family (GPT-2 or Qwen3),
    each file atomically.

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
    hf_config = CONVERTERS[model.config.arch].config_to_hf(model, eos)
    write_json_atomic(out_dir / "config.json", hf_config)
    write_model_card(out_dir, model, hf_config, tok, facts)
    return out_dir


# --------------------------------------------------------------------------------- any model


@dataclass
class LoadedModel:
    """A model ready to run, with how to tokenise for it."""

    name: str
    """The spec it was loaded from."""
    kind: Literal["ours", "transformers"]
    """Which code runs it: our model (either family), or a transformers causal LM."""
    model: nn.Module
    """Our model (kind "ours") or a transformers model (kind "transformers"), in eval mode."""
    tokeniser: Tokeniser | None
    """Our tokeniser for our model; None for a transformers model (see encode_batch)."""
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

    Our checkpoints run in our model with the tokeniser they name (checked against the
    fingerprint they were trained with). A Hugging Face GPT-2 or Qwen3 (a directory or a hub
    name) is converted to our model, with the .tkn file an export bundles, else GPT-2's
    tokeniser (see hf_tokeniser_spec); with `any_causal_lm`, a Hugging Face model of any
    causal-LM type (and any hub name) runs in transformers, with its own tokenizer, its weights
    in `dtype`. Our model loads in float32 (the caller autocasts). `tokeniser`: a spec that
    replaces the model's own (our model only).
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
    folder = hf_folder(spec)
    model = load_hf_dir(folder).to(device)
    return _ours(spec, model, get_tokeniser(tokeniser or hf_tokeniser_spec(folder)))


def _ours(name: str, model: LanguageModel, tok: Tokeniser) -> LoadedModel:
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
        help="write one of our checkpoints as a Hugging Face directory (GPT-2 or Qwen3)",
        description="Write one of our checkpoints as a Hugging Face directory: "
        "GPT2LMHeadModel for the gpt2 family, Qwen3ForCausalLM for qwen3.",
    )
    add_dataclass_args(export, ExportOptions)
    opts = ExportOptions(**explicit_values(parser.parse_args(argv), ExportOptions))
    lm = load_model(opts.checkpoint, torch.device("cpu"))
    facts = run_facts(opts.checkpoint) if is_checkpoint(opts.checkpoint) else None
    out = save_pretrained(lm.model, opts.out, lm.tokeniser, facts)  # type: ignore[arg-type]
    print(f"exported {opts.checkpoint} ({exported_params(lm.model):,} parameters) to {out}")
    if opts.push_to_hub is not None:
        print(f"pushed {out} to {push_to_hub(out, opts.push_to_hub)}")
    return 0


if __name__ == "__main__":
    run(main)
