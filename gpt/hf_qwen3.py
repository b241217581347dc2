"""The Qwen3 family's Hugging Face mapping: config.json and weights, both ways.

    python -m gpt.hf export runs/modern/checkpoints/best runs/modern/export   (a qwen3-family run)

gpt/model/qwen3.py names its parameters as `transformers.Qwen3ForCausalLM` does
(`model.layers.0.self_attn.q_proj.weight`, ...), so the weights are a key copy: only the padded
vocabulary rows are dropped on export (config.json's vocab_size is the real vocabulary, so
transformers never predicts a padding id), and a tied lm_head is not stored (transformers ties
it again from `tie_word_embeddings`). transformers loads an export with no custom code.

Import takes any Qwen3 checkpoint whose computation is ours, heads wider or narrower than
hidden_size / num_attention_heads included (the released Qwen3 models: `head_dim` 128 at any
width); the variants we do not implement (attention biases, sliding-window attention, rope
scaling, another activation) are refused with one line naming the file. The rope base is
read from `rope_parameters` (transformers >= 5) or the older top-level `rope_theta` /
`rope_scaling`; an export writes both, so older transformers read it too.
"""

from __future__ import annotations

from typing import Any

import torch

from gpt.cli import excerpt
from gpt.config import GPTConfig
from gpt.hf_hub import UnsupportedModelError
from gpt.model.base import LanguageModel

ARCHITECTURE = "Qwen3ForCausalLM"
EMBEDDING = "model.embed_tokens.weight"
HEAD = "lm_head.weight"
PADDED = (EMBEDDING, HEAD)  # the tables with one row per (padded) vocabulary id
# Buffers some checkpoints carry (rotary frequencies, recomputed from the config), not weights.
IGNORED = ("rotary_emb.inv_freq",)


def rope_theta(hf: dict[str, Any], where: str) -> float:
    """The rotary base of a Qwen3 config.json; UnsupportedModelError for scaled rope."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise UnsupportedModelError(
            f"{where}: unsupported Qwen3 variant (rope scaling {excerpt(kind)})"
        )
    return float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))


def config_from_hf(hf: dict[str, Any], where: str) -> GPTConfig:
    """Our GPTConfig (arch qwen3) from a Hugging Face Qwen3 config.json dict;
    UnsupportedModelError for a variant we do not implement."""
    width, heads = hf.get("hidden_size", 4096), hf.get("num_attention_heads", 32)
    layer_types = hf.get("layer_types") or []
    unsupported = {
        "attention_bias": hf.get("attention_bias", False),
        "use_sliding_window": hf.get("use_sliding_window", False),
        "layer_types": any(t != "full_attention" for t in layer_types),
        "hidden_act": hf.get("hidden_act", "silu") != "silu",
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        detail = ", ".join(f"{k}={excerpt(hf.get(k))}" for k in bad)
        raise UnsupportedModelError(f"{where}: unsupported Qwen3 variant ({detail})")
    theta = rope_theta(hf, where)
    head_dim = hf.get("head_dim") or 128  # Qwen3Config's default
    try:
        return GPTConfig.from_dict(  # each value's type checked: config.json is not trusted
            dict(
                arch="qwen3",
                block_size=hf.get("max_position_embeddings", 32768),
                vocab_size=hf.get("vocab_size", 151936),
                n_layer=hf.get("num_hidden_layers", 32),
                n_head=heads,
                n_embd=width,
                layer_norm_eps=hf.get("rms_norm_eps", 1e-6),
                n_kv_head=hf.get("num_key_value_heads") or heads,
                ffn_size=hf.get("intermediate_size", 22016),
                rope_theta=theta,
                tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
                head_size=None if head_dim * heads == width else head_dim,
            )
        )
    except (TypeError, ValueError) as e:  # GPTConfig's own refusals are UserErrors already
        raise UnsupportedModelError(f"{where}: invalid Qwen3 config ({e})") from None


def config_to_hf(model: LanguageModel, eos_token: int | None) -> dict[str, Any]:
    """config.json of a Qwen3ForCausalLM with our model's shape and real vocabulary."""
    cfg = model.config
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "qwen3",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.mlp_size,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": cfg.layer_norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_theta": cfg.rope_theta,  # transformers < 5 reads these two
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,  # we train without dropout
        "use_sliding_window": False,
        "sliding_window": None,
        "initializer_range": 0.02,
        "tie_word_embeddings": cfg.tied,
        "use_cache": True,
        "bos_token_id": eos_token,
        "eos_token_id": eos_token,
        "dtype": str(model.token_embedding.weight.dtype).removeprefix("torch."),
    }


def state_from_hf(
    hf_state: dict[str, torch.Tensor], config: GPTConfig, where: str
) -> dict[str, torch.Tensor]:
    """Hugging Face Qwen3ForCausalLM weights -> ours (the same names). With tied embeddings a
    stored lm_head must equal the embedding, and is dropped (the model ties it again)."""
    out = {k: v for k, v in hf_state.items() if not k.endswith(IGNORED)}
    if config.tied and HEAD in out:
        head = out.pop(HEAD)
        if EMBEDDING in out and not torch.equal(head, out[EMBEDDING]):
            raise UnsupportedModelError(
                f"{where}: tie_word_embeddings is true but {HEAD} differs from {EMBEDDING}"
            )
    return out


def state_to_hf(model: LanguageModel) -> dict[str, torch.Tensor]:
    """Our weights under Hugging Face names (ours): no padded vocabulary rows, no tied lm_head,
    contiguous CPU tensors."""
    vocab = model.config.vocab_size
    out = {}
    for name, value in model.state_dict().items():
        if name in model.tied_alias:
            continue
        value = value.detach()
        out[name] = (value[:vocab] if name in PADDED else value).cpu().contiguous()
    return out
