"""Checkpoint directories: atomic save, validated load, resume.

A model directory holds:
    model.safetensors   the weights, our parameter names (padded vocabulary rows included)
    config.json         {"format": "gpt-alpha-checkpoint", "version": 1, "model": GPTConfig,
                         "tokeniser": spec, "tokeniser_fingerprint": str | None, ...}
    tokeniser.tkn       a copy of a custom tokeniser, so the directory is self-contained
Training checkpoints add optimizer and loader state (see the trainer). Loading never unpickles
arbitrary objects: weights come from safetensors, anything else through weights_only=True.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from gpt.config import GPTConfig
from gpt.model import GPT

FORMAT_NAME = "gpt-alpha-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENISER_FILE = "tokeniser.tkn"


class CheckpointError(ValueError):
    """A checkpoint directory is missing, damaged or of another format."""


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temp file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def model_state_for_saving(model: GPT) -> dict[str, torch.Tensor]:
    """State dict without the tied lm_head alias, contiguous and on CPU (safetensors rejects
    shared storage)."""
    sd = model.state_dict()
    return {k: v.detach().cpu().contiguous() for k, v in sd.items() if k != "lm_head.weight"}


def is_checkpoint(path: str | Path) -> bool:
    """True when `path` is one of our model/checkpoint directories."""
    cfg = Path(path) / CONFIG_FILE
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("format") == FORMAT_NAME
    except (OSError, json.JSONDecodeError):
        return False


def save_model_dir(
    model: GPT,
    out_dir: str | Path,
    tokeniser_spec: str | None = None,
    tokeniser_fingerprint: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save weights, config and tokeniser into `out_dir`, atomically (temp dir, then rename)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp"))
    try:
        save_file(model_state_for_saving(model), str(tmp / WEIGHTS_FILE))
        spec = tokeniser_spec
        if spec is not None and spec != "gpt2" and Path(spec).is_file():
            shutil.copyfile(spec, tmp / TOKENISER_FILE)
            spec = TOKENISER_FILE
        meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "model": model.config.to_dict(),
            "tokeniser": spec,
            "tokeniser_fingerprint": tokeniser_fingerprint,
            **(extra or {}),
        }
        write_json_atomic(tmp / CONFIG_FILE, meta)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_meta(path: str | Path) -> dict[str, Any]:
    """The validated config.json of a checkpoint directory."""
    path = Path(path)
    cfg = path / CONFIG_FILE
    if not cfg.is_file():
        raise CheckpointError(f"{path}: not a GPT-α checkpoint (no {CONFIG_FILE})")
    try:
        meta = json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg}: damaged JSON ({e})") from None
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
    return str(Path(path) / spec) if not Path(spec).is_absolute() else spec


def load_model_dir(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[GPT, dict[str, Any]]:
    """Load a checkpoint directory's model (eval mode) and its metadata.

    The metadata's "tokeniser" is resolved to a spec that gpt.tokeniser.get_tokeniser accepts.
    """
    path = Path(path)
    meta = read_meta(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{path}: missing {WEIGHTS_FILE}")
    config = GPTConfig.from_dict(meta["model"])
    model = GPT(config)
    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise CheckpointError(
            f"{weights}: weights do not match the config (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    meta["tokeniser"] = resolve_tokeniser_spec(path, meta)
    return model.to(device).eval(), meta
