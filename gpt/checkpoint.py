"""Model directories (ours, and the weights half of a training checkpoint): atomic save,
validated load.

A model directory holds:
    model.safetensors   the weights, our parameter names (padded vocabulary rows included)
    config.json         {"format": "gpt-alpha-checkpoint", "version": 1, "model": GPTConfig,
                         "tokeniser": spec, "tokeniser_fingerprint": str | None, ...}
    tokeniser.tkn       a copy of a custom tokeniser, so the directory is self-contained
A training checkpoint adds the optimizer, data loader and RNG states (gpt/train/state.py);
`load_model_dir` reads either kind. Every directory is written atomically (a temp folder,
then one rename). Loading never unpickles arbitrary objects: weights come from safetensors,
everything else from JSON or torch.load(weights_only=True).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gpt.cli import UserError
from gpt.config import GPTConfig
from gpt.fsio import atomic_dir, read_json_object, write_json_atomic
from gpt.model.base import LanguageModel
from gpt.model.families import build_model

FORMAT_NAME = "gpt-alpha-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENISER_FILE = "tokeniser.tkn"


class CheckpointError(UserError):
    """A checkpoint directory is missing, damaged or of another format."""


def model_state_for_saving(model: LanguageModel) -> dict[str, torch.Tensor]:
    """State dict without a tied lm_head's alias, contiguous and on CPU (safetensors rejects
    shared storage)."""
    sd = model.state_dict()
    alias = model.tied_alias
    return {k: v.detach().cpu().contiguous() for k, v in sd.items() if k not in alias}


def is_checkpoint(path: str | Path) -> bool:
    """True when `path` is one of our model/checkpoint directories."""
    cfg = Path(path) / CONFIG_FILE
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("format") == FORMAT_NAME
    except (OSError, json.JSONDecodeError):
        return False


def write_model_files(
    out_dir: Path,
    state: dict[str, torch.Tensor],
    config: GPTConfig,
    tokeniser_spec: str | None = None,
    tokeniser_fingerprint: str | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write weights, config.json and a copy of a custom tokeniser into an existing folder."""
    save_file(state, str(out_dir / WEIGHTS_FILE))
    spec = tokeniser_spec
    if spec is not None and spec != "gpt2" and Path(spec).is_file():
        shutil.copyfile(spec, out_dir / TOKENISER_FILE)
        spec = TOKENISER_FILE
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "model": config.to_dict(),
        "tokeniser": spec,
        "tokeniser_fingerprint": tokeniser_fingerprint,
        **(extra or {}),
    }
    write_json_atomic(out_dir / CONFIG_FILE, meta)


def save_model_dir(
    model: LanguageModel,
    out_dir: str | Path,
    tokeniser_spec: str | None = None,
    tokeniser_fingerprint: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save weights, config and tokeniser into `out_dir`, atomically (temp dir, then rename)."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        write_model_files(
            tmp,
            model_state_for_saving(model),
            model.config,
            tokeniser_spec,
            tokeniser_fingerprint,
            extra,
        )
    return out_dir


def read_meta(path: str | Path) -> dict[str, Any]:
    """The validated config.json of a checkpoint directory."""
    path = Path(path)
    cfg = path / CONFIG_FILE
    if not cfg.is_file():
        raise CheckpointError(f"{path}: not a GPT-α checkpoint (no {CONFIG_FILE})")
    meta = read_json_object(cfg, CheckpointError)
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{cfg}: not a GPT-α checkpoint (format {meta.get('format')!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{cfg}: checkpoint format version {meta.get('version')}, expected {FORMAT_VERSION}"
        )
    return meta


def resolve_tokeniser_spec(path: str | Path, meta: dict[str, Any]) -> str | None:
    """The tokeniser spec of a checkpoint, with a bundled .tkn resolved to its full path."""
    spec = meta.get("tokeniser")
    if spec is None or spec == "gpt2":
        return spec
    if not isinstance(spec, str):
        raise CheckpointError(f"{Path(path) / CONFIG_FILE}: damaged (tokeniser {spec!r})")
    return str(Path(path) / spec) if not Path(spec).is_absolute() else spec


def load_weights(model: LanguageModel, path: str | Path) -> None:
    """Load a checkpoint directory's weights into `model` (same config), checking every key."""
    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{path}: missing {WEIGHTS_FILE}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:  # a damaged or truncated file
        raise CheckpointError(f"{weights}: damaged weights file ({e})") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # torch reports tensors whose shapes differ from the config's
        detail = str(e).strip().splitlines()[-1].strip()  # one "size mismatch for ..." line
        raise CheckpointError(f"{weights}: weights do not match {CONFIG_FILE} ({detail})") from None
    missing = [k for k in missing if k not in model.tied_alias]
    if missing or unexpected:
        raise CheckpointError(
            f"{weights}: weights do not match the config (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )


def _model_config(path: str | Path, meta: dict[str, Any]) -> GPTConfig:
    """The model shape recorded in a checkpoint's config.json (`meta`, from read_meta)."""
    try:
        return GPTConfig.from_dict(meta["model"])
    except (KeyError, TypeError, UserError) as e:  # absent, not an object, or bad values
        raise CheckpointError(f"{Path(path) / CONFIG_FILE}: bad model shape ({e})") from None


def load_model_dir(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[LanguageModel, dict[str, Any]]:
    """Load a checkpoint directory's model (eval mode) and its metadata.

    The metadata's "tokeniser" is resolved to a spec that gpt.data.tokeniser.get_tokeniser accepts.
    """
    path = Path(path)
    meta = read_meta(path)
    model = build_model(_model_config(path, meta))
    load_weights(model, path)
    meta["tokeniser"] = resolve_tokeniser_spec(path, meta)
    return model.to(device).eval(), meta
