"""Hugging Face interoperability: load any GPT-2 checkpoint, export ours as a GPT-2 directory.

    python -m gpt.hf export runs/demo/checkpoints/best runs/demo/export

Our parameter names are Hugging Face's (`transformer.h.0.attn.c_attn.weight`, ...), so the
conversion is a key copy plus the transposition of the four Conv1D weights listed in TRANSPOSED
(Hugging Face stores them as (in, out), nn.Linear as (out, in)). The lm_head is tied to wte on
both sides and is never stored. Weights are read from safetensors, or from a PyTorch .bin with
torch.load(weights_only=True); nothing is unpickled.

An export is what `transformers.GPT2LMHeadModel.from_pretrained(dir)` expects: config.json
(model_type gpt2, the real vocabulary size, n_positions = block_size), model.safetensors (the
real vocabulary rows only) and the tokenizer files: GPT-2's vocab.json/merges.txt, or for our
own byte-level BPE a tokenizer.json that `PreTrainedTokenizerFast` loads (plus the .tkn file).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gpt.checkpoint import is_checkpoint, load_model_dir
from gpt.cli import UserError, run
from gpt.config import GPTConfig
from gpt.data.tokeniser import (
    ENDOFTEXT,
    GPT2_FILES,
    GPT2_URLS,
    GPTTokeniser,
    Tokeniser,
    TokeniserError,
    get_tokeniser,
)
from gpt.fsio import atomic_path, copy_atomic, write_json_atomic, write_text_atomic
from gpt.model.gpt2 import GPT

# Conv1D weights, stored (in, out) by Hugging Face and (out, in) by nn.Linear.
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers some GPT-2 checkpoints carry (the causal mask), not weights.
IGNORED = (".attn.bias", ".attn.masked_bias")
HUB_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
HUB_ORG = "openai-community"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SAFETENSORS_INDEX = "model.safetensors.index.json"
TKN_FILE = "tokeniser.tkn"


class NotGPT2Error(UserError):
    """The checkpoint is not a GPT-2 model this code can run (other type, damaged, variant)."""


class ModelNotFoundError(UserError):
    """No such model directory, or a hub model that cannot be downloaded."""


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
    try:
        hf_config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NotGPT2Error(f"{config_file}: damaged JSON ({e})") from None
    if not isinstance(hf_config, dict):
        raise NotGPT2Error(f"{config_file}: damaged (not a JSON object)")
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


def _hub_host() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT.split("://")[-1].split("/")[0]


def download_hub_model(name: str) -> Path:
    """The local folder of hub model `name` (config.json + weights), downloading if needed."""
    from huggingface_hub import hf_hub_download

    repo = name if "/" in name else f"{HUB_ORG}/{name}"
    hint = (
        f"cannot download {name!r} from the Hugging Face hub (offline?); on a connected machine "
        f"run `hf download {repo} config.json model.safetensors --local-dir DIR` "
        f"(older clients: `huggingface-cli download ...`), copy DIR here and pass DIR instead"
    )

    def fetch(filename: str, local_only: bool) -> Path:
        return Path(hf_hub_download(repo, filename, local_files_only=local_only))

    try:
        fetch("config.json", True)
        return fetch(WEIGHT_FILES[0], True).parent
    except Exception:  # not in the local cache: download
        pass
    proxied = any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY"))
    if not proxied:
        try:
            socket.create_connection((_hub_host(), 443), timeout=5).close()
        except OSError:
            raise ModelNotFoundError(hint) from None
    try:
        fetch("config.json", False)
        return fetch(WEIGHT_FILES[0], False).parent
    except Exception as e:  # offline mode, HTTP errors, timeouts
        raise ModelNotFoundError(f"{hint} ({type(e).__name__})") from None


def from_pretrained(name_or_dir: str | Path) -> GPT:
    """A GPT-2 model from a local directory (Hugging Face's or one of our checkpoints) or a hub
    name (gpt2, gpt2-medium, gpt2-large, gpt2-xl, optionally prefixed openai-community/)."""
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return load_model_dir(path)[0] if is_checkpoint(path) else load_hf_dir(path)
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


def gpt2_bpe_files(tokeniser: Tokeniser) -> tuple[Path, Path]:
    """GPT-2's encoder.json and vocab.bpe: the tokeniser's folder, GPT2_BPE_DIR, or the
    tiktoken download cache (files named by the sha1 of their URL)."""
    import hashlib

    folders = [getattr(tokeniser, "bpe_dir", None), os.environ.get("GPT2_BPE_DIR")]
    for folder in filter(None, folders):
        files = tuple(Path(folder).expanduser() / f for f in GPT2_FILES)
        if all(f.is_file() for f in files):
            return files  # type: ignore[return-value]
    cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    cache = cache or os.path.join(tempfile.gettempdir(), "data-gym-cache")
    files = tuple(Path(cache) / hashlib.sha1(u.encode()).hexdigest() for u in GPT2_URLS)
    if all(f.is_file() for f in files):
        return files  # type: ignore[return-value]
    raise TokeniserError(
        "GPT-2 tokenizer files (encoder.json, vocab.bpe) not found: set GPT2_BPE_DIR"
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (the alphabet of byte-level BPE files)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = {b: chr(b) for b in printable}
    extra = [b for b in range(256) if b not in chars]
    chars.update({b: chr(256 + n) for n, b in enumerate(extra)})
    return chars


def tokenizer_json(tokeniser: GPTTokeniser) -> str:
    """A `tokenizers` tokenizer.json for our byte-level BPE (GPTTokeniser): its merges in order,
    its pre-split regex, byte-level alphabet and special tokens, so that transformers'
    PreTrainedTokenizerFast encodes exactly as we do."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    chars = _bytes_to_unicode()

    def text(i: int) -> str:
        return "".join(chars[b] for b in tokeniser.token_bytes(i))

    n_tokens = 256 + len(tokeniser.merges)
    vocab = {text(i): i for i in range(n_tokens)}
    merges = [(text(a), text(b)) for a, b in tokeniser.merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(tokeniser.pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = sorted(tokeniser.special_tokens.items(), key=lambda kv: kv[1])
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s, _ in specials])
    for s, i in specials:
        if tok.token_to_id(s) != i:
            raise ValueError(f"special token {s!r} would get id {tok.token_to_id(s)}, not {i}")
    return tok.to_str()


def write_tokeniser_files(out_dir: Path, tokeniser: Tokeniser, block_size: int) -> None:
    """The tokenizer files transformers' AutoTokenizer loads (see the module docstring)."""
    eot = ENDOFTEXT if ENDOFTEXT in tokeniser.special_tokens else None
    specials = {"bos_token": eot, "eos_token": eot, "unk_token": eot}
    if tokeniser.spec == "gpt2":
        encoder, bpe = gpt2_bpe_files(tokeniser)
        copy_atomic(encoder, out_dir / "vocab.json")
        copy_atomic(bpe, out_dir / "merges.txt")
        tokenizer_class = "GPT2Tokenizer"
    elif isinstance(tokeniser, GPTTokeniser):
        spec = Path(tokeniser.spec)
        write_text_atomic(out_dir / "tokenizer.json", tokenizer_json(tokeniser))
        if spec.is_file():
            copy_atomic(spec, out_dir / TKN_FILE)
        tokenizer_class = "PreTrainedTokenizerFast"
    else:
        raise ValueError(f"cannot write Hugging Face tokenizer files for {tokeniser!r}")
    write_json_atomic(out_dir / "special_tokens_map.json", specials)
    write_json_atomic(
        out_dir / "tokenizer_config.json",
        {
            "tokenizer_class": tokenizer_class,
            "model_max_length": block_size,
            "add_prefix_space": False,
            "add_bos_token": False,
            "clean_up_tokenization_spaces": False,
            **specials,
        },
    )


def save_pretrained(
    model: GPT, out_dir: str | Path, tokeniser: Tokeniser | str | None = None
) -> Path:
    """Write `out_dir` as a Hugging Face GPT-2 model directory (each file atomically).

    tokeniser: a Tokeniser or a spec ("gpt2" or a .tkn path); its files are written too and its
    end-of-text id becomes bos/eos_token_id.
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
    return out_dir


def hf_tokeniser_spec(folder: str | Path) -> str:
    """The tokeniser of an exported directory: its bundled .tkn file, else "gpt2"."""
    tkn = Path(folder) / TKN_FILE
    return str(tkn.resolve()) if tkn.is_file() else "gpt2"


# --------------------------------------------------------------------------------- command


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gpt.hf",
        description="Hugging Face interoperability.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser(
        "export",
        help="write one of our checkpoints as a Hugging Face GPT-2 directory",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    export.add_argument("checkpoint", help="our checkpoint or model directory")
    export.add_argument("out", help="output directory (created; files in it are replaced)")
    args = parser.parse_args(argv)
    model, meta = load_model_dir(args.checkpoint)
    out = save_pretrained(model, args.out, meta.get("tokeniser"))
    print(f"exported {args.checkpoint} ({model.num_params():,} parameters) to {out}")
    return 0


if __name__ == "__main__":
    run(main)
