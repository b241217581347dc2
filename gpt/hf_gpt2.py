"""The GPT-2 family's Hugging Face mapping: config.json and weights, both ways.

    python -m gpt.hf export runs/demo/checkpoints/best runs/demo/export   (a gpt2-family run)

Our parameter names are Hugging Face's (`transformer.h.0.attn.c_attn.weight`, ...), so the
conversion is a key copy plus the transposition of the four Conv1D weights listed in TRANSPOSED
(Hugging Face stores them as (in, out), nn.Linear as (out, in)). The lm_head is tied to wte on
both sides and is never stored. gpt/hf.py dispatches here for `model_type: gpt2` and arch gpt2;
gpt/hf_qwen3.py is the other family, with the same four functions.
"""

from __future__ import annotations

from typing import Any

import torch

from gpt.cli import excerpt
from gpt.config import GPTConfig
from gpt.hf_hub import UnsupportedModelError
from gpt.model.base import LanguageModel

ARCHITECTURE = "GPT2LMHeadModel"
# Conv1D weights, stored (in, out) by Hugging Face and (out, in) by nn.Linear.
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers some GPT-2 checkpoints carry (the causal mask), not weights.
IGNORED = (".attn.bias", ".attn.masked_bias")


def config_from_hf(hf: dict[str, Any], where: str) -> GPTConfig:
    """Our GPTConfig from a Hugging Face GPT-2 config.json dict; UnsupportedModelError for a
    variant we do not implement."""
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
        detail = ", ".join(f"{k}={excerpt(hf.get(k))}" for k in bad)
        raise UnsupportedModelError(f"{where}: unsupported GPT-2 variant ({detail})")
    try:
        return GPTConfig.from_dict(  # each value's type checked: config.json is not trusted
            dict(
                block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
                vocab_size=hf.get("vocab_size", 50257),
                n_layer=hf.get("n_layer", 12),
                n_head=hf.get("n_head", 12),
                n_embd=n_embd,
                layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            )
        )
    except (TypeError, ValueError) as e:
        raise UnsupportedModelError(f"{where}: invalid GPT-2 config ({e})") from None


def config_to_hf(model: LanguageModel, eos_token: int | None) -> dict[str, Any]:
    """config.json of a GPT2LMHeadModel with our model's shape and real vocabulary."""
    cfg = model.config
    return {
        "architectures": [ARCHITECTURE],
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
        "dtype": str(model.token_embedding.weight.dtype).removeprefix("torch."),
    }


def state_from_hf(
    hf_state: dict[str, torch.Tensor], config: GPTConfig, where: str
) -> dict[str, torch.Tensor]:
    """Hugging Face GPT-2 weights (GPT2LMHeadModel or bare GPT2Model names) -> our names (the
    shape is in the weights; config is for the other family's tied head)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in hf_state.items():
        name = key if key.startswith(("transformer.", "lm_head.")) else "transformer." + key
        if name.endswith(IGNORED):
            continue
        if name == "lm_head.weight":
            wte = hf_state.get("transformer.wte.weight", hf_state.get("wte.weight"))
            if wte is not None and not torch.equal(wte, value):
                raise UnsupportedModelError(
                    f"{where}: lm_head.weight differs from wte (untied heads are unsupported)"
                )
            continue
        out[name] = value.t() if name.endswith(TRANSPOSED) else value
    return out


def state_to_hf(model: LanguageModel) -> dict[str, torch.Tensor]:
    """Our weights under Hugging Face names: Conv1D weights transposed, no padded vocab rows,
    no lm_head (tied), contiguous CPU tensors."""
    vocab = model.config.vocab_size
    out = {}
    for name, value in model.state_dict().items():
        if name in model.tied_alias:
            continue
        value = value.detach()
        if name == "transformer.wte.weight":
            value = value[:vocab]
        elif name.endswith(TRANSPOSED):
            value = value.t()
        out[name] = value.cpu().contiguous()
    return out
