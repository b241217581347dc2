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
everything else from JSON or torch.load(weights_only=True). Nor does it trust config.json: the
tokeniser it names is "gpt2" or the directory's own tokeniser.tkn, its fields are type-checked,
and the model is built on the meta device and checked against the weights' header before any
memory is allocated.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from gpt.cli import UserError, excerpt
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
    """The validated config.json of a checkpoint directory (its format, version and tokeniser
    fields; the model shape is checked by `_model_config`)."""
    path = Path(path)
    cfg = path / CONFIG_FILE
    if not cfg.is_file():
        raise CheckpointError(f"{path}: not a GPT-α checkpoint (no {CONFIG_FILE})")
    meta = read_json_object(cfg, CheckpointError)
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(
            f"{cfg}: not a GPT-α checkpoint (format {excerpt(meta.get('format'))})"
        )
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{cfg}: checkpoint format version {excerpt(meta.get('version'))}, "
            f"expected {FORMAT_VERSION}"
        )
    for key in ("tokeniser", "tokeniser_fingerprint"):
        if not isinstance(meta.get(key), str | None):
            raise CheckpointError(
                f"{cfg}: {key} must be a string or null, got {excerpt(meta.get(key))}"
            )
    return meta


def resolve_tokeniser_spec(path: str | Path, meta: dict[str, Any]) -> str | None:
    """The tokeniser of a checkpoint: "gpt2", None (none recorded) or the full path of the
    tokeniser.tkn inside the directory. A checkpoint's config.json is not trusted to name any
    other file: reading one it chose could show that file's content in an error."""
    spec = meta.get("tokeniser")
    if spec is None or spec == "gpt2":
        return spec
    path = Path(path)
    if spec != TOKENISER_FILE:
        raise CheckpointError(
            f"{path / CONFIG_FILE}: tokeniser must be 'gpt2' or {TOKENISER_FILE!r} (the copy in "
            f"the checkpoint directory), got {excerpt(spec)}"
        )
    bundled = path / TOKENISER_FILE
    if not bundled.resolve().is_relative_to(path.resolve()):
        raise CheckpointError(f"{bundled}: links to a file outside the checkpoint directory")
    return str(bundled)


def weight_shapes(file: Path, error: type[UserError] = CheckpointError) -> dict[str, list[int]]:
    """The name and shape of each tensor in a safetensors file, from its header alone (no tensor
    is read); `error` names a file that is not safetensors."""
    try:
        with safe_open(str(file), framework="pt") as st:
            return {key: st.get_slice(key).get_shape() for key in st.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as e:  # missing, damaged or truncated
        raise error(f"{file}: damaged weights file ({e})") from None


def meta_model(
    config: GPTConfig, n_tensors: int, where: str, error: type[UserError] = CheckpointError
) -> LanguageModel:
    """The model of `config` on the meta device: its names and shapes, without memory or
    initialisation, to check weights of `n_tensors` tensors against before anything is
    allocated. A config with more blocks than the weights have tensors is refused first:
    building a million blocks, even on the meta device, takes minutes."""
    if config.n_layer > n_tensors:
        raise error(
            f"{where}: weights do not match {CONFIG_FILE} ({config.n_layer} layers, "
            f"{n_tensors} tensors)"
        )
    with torch.device("meta"):
        return build_model(config)


def check_weight_shapes(
    model: LanguageModel,
    shapes: Mapping[str, Sequence[int]],
    where: str,
    error: type[UserError] = CheckpointError,
) -> None:
    """Refuse weights (`shapes`: each tensor's name and shape) whose names or shapes are not
    `model`'s; a model on the meta device will do, only shapes are compared."""
    alias = model.tied_alias
    expected = {k: list(v.shape) for k, v in model.state_dict().items() if k not in alias}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing or unexpected:
        raise error(
            f"{where}: weights do not match {CONFIG_FILE} (missing {missing[:3]}, "
            f"unexpected {excerpt(unexpected[:3], 80)})"
        )
    wrong = [k for k in expected if list(shapes[k]) != expected[k]]
    if wrong:
        name = wrong[0]
        raise error(
            f"{where}: weights do not match {CONFIG_FILE} ({name} is {list(shapes[name])} in "
            f"the weights, {expected[name]} by {CONFIG_FILE})"
        )


def assign_weights(model: LanguageModel, state: dict[str, torch.Tensor]) -> LanguageModel:
    """`model`, built on the meta device and checked against `state` (check_weight_shapes),
    with `state`'s tensors as its parameters in float32 and a tied head tied again."""
    state = {k: v.float().contiguous() for k, v in state.items()}
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()  # the assigned embedding replaced the tensor the head shared
    return model


def _weights_file(path: Path) -> Path:
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{path}: missing {WEIGHTS_FILE}")
    return weights


def _read_tensors(weights: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(weights))
    except (SafetensorError, OSError) as e:  # a damaged or truncated file
        raise CheckpointError(f"{weights}: damaged weights file ({e})") from None


def load_weights(model: LanguageModel, path: str | Path) -> None:
    """Load a checkpoint directory's weights into `model` (same config): every name and shape
    is checked against the file's header before a tensor is read."""
    weights = _weights_file(Path(path))
    check_weight_shapes(model, weight_shapes(weights), str(weights))
    model.load_state_dict(_read_tensors(weights), strict=False)


def _model_config(path: str | Path, meta: dict[str, Any]) -> GPTConfig:
    """The model shape recorded in a checkpoint's config.json (`meta`, from read_meta), each
    field's type and range checked."""
    cfg = Path(path) / CONFIG_FILE
    shape = meta.get("model")
    if not isinstance(shape, dict):
        raise CheckpointError(f"{cfg}: model must be an object, got {excerpt(shape)}")
    try:
        return GPTConfig.from_dict(shape)
    except UserError as e:  # an unknown field, a value of another type or out of range
        raise CheckpointError(f"{cfg}: bad model shape ({e})") from None


def load_model_dir(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[LanguageModel, dict[str, Any]]:
    """Load a checkpoint directory's model (eval mode) and its metadata.

    config.json is not trusted: the model is built on the meta device and checked against the
    weights' header before memory is allocated (a config claiming a huge width costs nothing).
    The metadata's "tokeniser" is resolved to a spec that gpt.data.tokeniser.get_tokeniser accepts.
    """
    path = Path(path)
    meta = read_meta(path)
    config = _model_config(path, meta)
    meta["tokeniser"] = resolve_tokeniser_spec(path, meta)
    weights = _weights_file(path)
    shapes = weight_shapes(weights)
    model = meta_model(config, len(shapes), str(weights))
    check_weight_shapes(model, shapes, str(weights))
    model = assign_weights(model, _read_tensors(weights))
    return model.to(device).eval(), meta
