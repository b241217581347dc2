"""What a run reads: the prepared data (its tokeniser checked, the model sized for its vocabulary,
the training and validation loaders) and the HellaSwag examples it scores at each evaluation.

Whatever depends on one node's files (the HellaSwag file, a download) is decided on rank 0 and
shared with every rank, so that all ranks take the same path through the collectives.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpt import distributed
from gpt.cli import UserError
from gpt.config import GPTConfig, TrainConfig, model_preset
from gpt.data.loader import DataLoader
from gpt.data.shards import split_tokens
from gpt.data.tokeniser import Tokeniser, get_tokeniser
from gpt.distributed import DistEnv
from gpt.hellaswag.data import download_split, find_hellaswag_file, load_examples

Say = Callable[[str], None]


def check_tokeniser(cfg: TrainConfig, manifest: dict[str, Any]) -> Tokeniser:
    """The run's tokeniser, which must be the one the data was prepared with."""
    tok = get_tokeniser(cfg.tokeniser)
    if tok.fingerprint != manifest["fingerprint"]:
        raise UserError(
            f"--tokeniser {cfg.tokeniser} ({tok.name}, fingerprint {tok.fingerprint[:12]}) does "
            f"not match {cfg.data}, prepared with {manifest['tokeniser_name']} (fingerprint "
            f"{manifest['fingerprint'][:12]}); pass the tokeniser of the data"
        )
    return tok


def model_shape(cfg: TrainConfig, manifest: dict[str, Any]) -> GPTConfig:
    """The --model preset with the shape flags given (--n-layer, ...), sized for the data's
    vocabulary; seq_len must fit its context."""
    config = model_preset(
        cfg.model,
        **cfg.shape_overrides(),
        vocab_size=manifest["vocab_size"],
        pad_vocab_multiple=cfg.pad_vocab_multiple,
    )
    if cfg.seq_len > config.block_size:
        raise UserError(
            f"seq_len {cfg.seq_len} exceeds the {cfg.model} model's block_size {config.block_size}"
        )
    return config


def loader(cfg: TrainConfig, env: DistEnv, tok: Tokeniser, split: str) -> DataLoader:
    """This rank's loader of `split`: its share of each step's rows, in the seed's order."""
    return DataLoader(
        cfg.data,
        batch_size=cfg.batch_size,
        seq_len=cfg.seq_len,
        split=split,
        rank=env.rank,
        world_size=env.world_size,
        seed=cfg.seed,
        fingerprint=tok.fingerprint,
    )


def val_loader(
    cfg: TrainConfig, env: DistEnv, manifest: dict[str, Any], tok: Tokeniser
) -> tuple[DataLoader | None, int]:
    """The deterministic validation loader and its number of batches per evaluation
    (val_tokens, capped by the split), or (None, 0) when the data has no val split."""
    if split_tokens(manifest, "val") == 0:
        return None, 0
    val = loader(cfg, env, tok, "val")
    per_step = cfg.batch_size * cfg.seq_len * env.world_size
    # The last batch needs one token beyond it (its final target); never wrap around.
    budget = min(cfg.val_tokens, val.tokens_in_split - 1)
    return val, max(1, budget // per_step)


def load_hellaswag(cfg: TrainConfig, say: Say) -> list[dict[str, Any]] | None:
    """The HellaSwag examples to score during training, or None (one line said why).

    Rank 0 alone finds (or downloads) and reads the file, and every rank receives its examples,
    or its error, by broadcast: all ranks take the same path whatever files their node holds, so
    they reach the same collectives, and a node without the file still scores its share."""
    if cfg.hellaswag == "off":
        return None
    return distributed.decide_on_rank0(lambda: read_hellaswag(cfg, say))


def read_hellaswag(cfg: TrainConfig, say: Say) -> list[dict[str, Any]] | None:
    """Rank 0's side of `load_hellaswag`: the examples, or None with one line."""
    auto = cfg.hellaswag == "auto"
    path = find_hellaswag_file(None if auto else cfg.hellaswag)
    if path is None and auto:
        path = download_hellaswag(say)
    elif path is None:
        say(f"hellaswag: skipped, no file {cfg.hellaswag}; pass --hellaswag FILE")
    return None if path is None else load_examples(path, limit=cfg.hellaswag_limit)


def download_hellaswag(say: Say) -> Path | None:
    """The val split downloaded once into the cache (atomically), or None with one line when
    that fails (offline, or the cache cannot be written): the run goes on without HellaSwag."""
    try:
        path = download_split("val")
    except (UserError, OSError) as e:
        say(f"hellaswag: skipped ({e}); pass --hellaswag FILE or set HELLASWAG_FILE")
        return None
    say(f"hellaswag: downloaded the val split to {path}")
    return path
