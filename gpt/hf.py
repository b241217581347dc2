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
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from gpt import hf_gpt2, hf_qwen3
from gpt.checkpoint import (
    assign_weights,
    check_weight_shapes,
    is_checkpoint,
    load_model_dir,
    meta_model,
    weight_shapes,
)
from gpt.cli import (
    ArgumentParser,
    UserError,
    add_dataclass_args,
    excerpt,
    explicit_values,
    option,
    run,
)
from gpt.config import GPTConfig
from gpt.data.bpe import TokeniserError
from gpt.data.tokeniser import Tokeniser, get_tokeniser
from gpt.fsio import atomic_dir, atomic_path, read_json_object, write_json_atomic
from gpt.hf_card import RunFacts, exported_params, push_to_hub, run_facts, write_model_card
from gpt.hf_hub import (
    HUB_NAMES,
    ModelNotFoundError,
    UnsupportedModelError,
    download_hub_model,
    is_hub_name,
    refuse_local_name,
)
from gpt.hf_tokenizer import hf_tokeniser_spec, write_tokeniser_files
from gpt.model.base import LanguageModel

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
            f"{where}: model_type is {excerpt(model_type)}, not a GPT-2 or Qwen3 model"
        )
    return CONVERTERS[model_type]


def state_to_hf(model: LanguageModel) -> dict[str, torch.Tensor]:
    """Our weights under Hugging Face names for the model's family (no padded vocabulary rows,
    no tied lm_head), contiguous CPU tensors."""
    return CONVERTERS[model.config.arch].state_to_hf(model)


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a Hugging Face directory: the shards model.safetensors.index.json
    lists, else model.safetensors, else pytorch_model.bin. An index names .safetensors files in
    the folder itself, nothing elsewhere."""
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        weight_map = read_json_object(index, UnsupportedModelError, "index").get("weight_map")
        if not isinstance(weight_map, dict):
            raise UnsupportedModelError(f"{index}: damaged index (no weight_map object)")
        for shard in weight_map.values():
            if not (isinstance(shard, str) and shard.endswith(".safetensors")) or (
                Path(shard).name != shard
            ):
                raise UnsupportedModelError(
                    f"{index}: damaged index (shard {excerpt(shard)} is not a .safetensors "
                    "file in its folder)"
                )
        return [folder / shard for shard in sorted(set(weight_map.values()))]
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
    raise ModelNotFoundError(f"{folder}: no {' or '.join(WEIGHT_FILES)}")


def weight_file_shapes(files: list[Path]) -> dict[str, list[int]]:
    """The name and shape of every tensor in `files` (weight_files), from their headers: no
    tensor is read."""
    if files[0].name == WEIGHT_FILES[1]:
        return {k: list(v.shape) for k, v in _read_bin(files[0], "meta").items()}
    shapes: dict[str, list[int]] = {}
    for f in files:
        shapes.update(weight_shapes(f, UnsupportedModelError))
    return shapes


def read_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    """All tensors of `files` (weight_files), on the CPU."""
    if files[0].name == WEIGHT_FILES[1]:
        return _read_bin(files[0], "cpu")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            state.update(load_file(str(f)))
        except (SafetensorError, OSError) as e:  # missing shard, damaged file
            raise UnsupportedModelError(f"{f}: cannot read weights ({e})") from None
    return state


def _read_bin(file: Path, device: str) -> dict[str, torch.Tensor]:
    """A pytorch_model.bin's tensors through torch.load(weights_only=True): nothing but tensors
    is unpickled. On the meta device: their shapes, without reading their data."""
    try:
        state = torch.load(file, map_location=device, weights_only=True)
    except Exception as e:  # unpickling refused (the first line names why) or damaged file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsupportedModelError(f"{file}: cannot read weights ({first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UnsupportedModelError(f"{file}: not a state dict of tensors")
    return state


def shape_probes(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Stand-ins for tensors of these shapes that hold no memory (views of one zero, every
    stride 0), so that a family's mapping of names and layouts (transposes, a tied head
    compared with the embedding) runs on them before any weight is read."""
    zero = torch.zeros(())
    return {name: zero.expand(shape) for name, shape in shapes.items()}


def hf_model_config(family: ModuleType, hf: dict[str, Any], where: str) -> GPTConfig:
    """Our GPTConfig from a Hugging Face config.json (`hf`) by its family's mapping. config.json
    is not trusted: a value of another type than the mapping expects is a one-line error naming
    the file wherever the mapping first uses it, not a traceback."""
    try:
        return family.config_from_hf(hf, where)
    except UserError:  # the mapping's own refusals, naming the file and field
        raise
    except (TypeError, ValueError, AttributeError) as e:  # e.g. a string where a number goes
        raise UnsupportedModelError(f"{where}: a field has the wrong type ({e})") from None


def load_hf_dir(folder: Path) -> LanguageModel:
    """Our model from a local Hugging Face GPT-2 or Qwen3 directory (config.json + weights),
    float32. The model is built on the meta device and checked against the weights' headers
    before memory is allocated or a weight read."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelNotFoundError(f"{folder}: no config.json (not a Hugging Face model directory)")
    hf_config = read_json_object(config_file, UnsupportedModelError)
    family = converter(hf_config, str(config_file))
    config = hf_model_config(family, hf_config, str(config_file))
    files = weight_files(folder)
    shapes = weight_file_shapes(files)
    model = meta_model(config, len(shapes), str(folder), UnsupportedModelError)
    try:
        mapped = family.state_from_hf(shape_probes(shapes), config, str(folder))
    except RuntimeError as e:  # a tensor of a rank the mapping cannot lay out (.t() of 3-D)
        raise UnsupportedModelError(f"{folder}: weights do not match config.json ({e})") from None
    ours = {name: list(probe.shape) for name, probe in mapped.items()}
    check_weight_shapes(model, ours, str(folder), UnsupportedModelError)
    weights = family.state_from_hf(read_weights(files), config, str(folder))
    return assign_weights(model, weights).eval()


def hf_folder(name_or_dir: str | Path) -> Path:
    """The local folder of a Hugging Face directory or hub name (downloaded once). A name that
    reads as a local path is never sent to the hub (gpt/hf_hub.py's looks_local)."""
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_dir)
    refuse_local_name(name)
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
    """Write `out_dir` as a Hugging Face model directory of the model's family (GPT-2 or Qwen3):
    filled as a fresh folder that replaces `out_dir` whole at the end, so no file of an earlier
    export survives (a stale tokeniser.tkn would be the one loaded back). An existing `out_dir`
    must be empty or an earlier export (`is_export`); any other folder is refused, never
    replaced.

    tokeniser: a Tokeniser or a spec ("gpt2" or a .tkn path); its files are written too and its
    end-of-text id becomes bos/eos_token_id. facts: how the model was trained, for the model
    card (gpt/hf_card.py's run_facts).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not (out_dir.is_dir() and (is_export(out_dir) or _empty(out_dir))):
        raise UserError(
            f"{out_dir}: exists and is not an earlier export (an export replaces its folder "
            "whole); export into a new or empty folder"
        )
    tok = get_tokeniser(tokeniser) if isinstance(tokeniser, str) else tokeniser
    if tok is not None and tok.n_vocab > model.config.vocab_size:
        raise TokeniserError(
            f"tokeniser {tok.name} has {tok.n_vocab} tokens, the model only "
            f"{model.config.vocab_size}"
        )
    with atomic_dir(out_dir) as folder:
        _write_export(folder, model, tok, facts)
    return out_dir


def _write_export(
    folder: Path, model: LanguageModel, tok: Tokeniser | None, facts: RunFacts | None
) -> None:
    """An export's files in a fresh folder: weights, tokenizer files, config.json, model card."""
    with atomic_path(folder / WEIGHT_FILES[0]) as tmp:
        save_file(state_to_hf(model), tmp, metadata={"format": "pt"})
    if tok is not None:
        write_tokeniser_files(folder, tok, model.config.block_size)
    eos = tok.eot_token if tok is not None else None
    hf_config = CONVERTERS[model.config.arch].config_to_hf(model, eos)
    write_json_atomic(folder / "config.json", hf_config)
    write_model_card(folder, model, hf_config, tok, facts)


def is_export(folder: Path) -> bool:
    """Whether `folder` holds a Hugging Face model of a family we export: config.json naming
    its model_type, and model.safetensors (not a run directory, nor one of our checkpoints)."""
    try:
        hf = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no config.json, or not JSON
        return False
    return (
        isinstance(hf, dict)
        and hf.get("model_type") in CONVERTERS
        and (folder / WEIGHT_FILES[0]).is_file()
    )


def _empty(folder: Path) -> bool:
    return next(folder.iterdir(), None) is None


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
    p = Path(name).expanduser()
    if p.exists() and not (p / "config.json").is_file():
        raise UserError(f"{name}: neither one of our checkpoints nor a Hugging Face model folder")
    if not p.exists():
        refuse_local_name(name)  # a missing folder, never a hub repository
        if name.count("/") > 1:  # nor a repository id: those are org/name
            raise ModelNotFoundError(f"{name}: no such model directory")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        source = str(p) if p.exists() else name  # transformers does not expand ~
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
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
    """Output directory: new, empty or an earlier export, which is replaced whole."""
    push_to_hub: str | None = None
    """Also upload the export's files (those it wrote, nothing else in the folder) to this hub
    model repository (created if needed), e.g. me/demo."""
    private: bool = False
    """With --push-to-hub: create the repository private (an existing public one is refused)."""


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
    if opts.private and opts.push_to_hub is None:
        raise UserError("--private applies to the repository of --push-to-hub, which is not given")
    lm = load_model(opts.checkpoint, torch.device("cpu"))
    facts = run_facts(opts.checkpoint) if is_checkpoint(opts.checkpoint) else None
    out = save_pretrained(lm.model, opts.out, lm.tokeniser, facts)  # type: ignore[arg-type]
    print(f"exported {opts.checkpoint} ({exported_params(lm.model):,} parameters) to {out}")
    if opts.push_to_hub is not None:
        files = sorted(f.name for f in out.iterdir())  # a fresh folder: what the export wrote
        url = push_to_hub(out, opts.push_to_hub, files, private=opts.private)
        print(f"pushed {', '.join(files)} to {url}")
    return 0


if __name__ == "__main__":
    run(main)
