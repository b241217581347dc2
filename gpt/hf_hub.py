"""Models from the Hugging Face hub: the local folder of a hub model, downloaded once, and the
errors of loading a Hugging Face model.

    python inference.py --model gpt2       (a hub name; gpt.hf.from_pretrained converts it)

A hub name is one of GPT-2's four (HUB_NAMES, optionally prefixed openai-community/) or any
`org/name` repository that does not read as a local path (`looks_local`: a mistyped
`runs/gtp2` is a missing folder, never a download); what it holds is decided by its
config.json (gpt/hf.py converts GPT-2 and Qwen3 models and refuses others). Offline, the error
says how to fetch the files on a connected machine and pass the folder.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from gpt.cli import UserError

HUB_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
HUB_ORG = "openai-community"
# What a download fetches: the config, the weights (one file or shards and their index) and the
# tokenizer files an export writes.
HUB_FILES = (
    "config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokeniser.tkn",
)
REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")


class ModelNotFoundError(UserError):
    """No such model directory, or a hub model that cannot be downloaded."""


class UnsupportedModelError(UserError):
    """A Hugging Face checkpoint this code cannot run: another model type, a variant of GPT-2 or
    Qwen3 we do not implement, or damaged files. The message names the file."""


def is_hub_name(name: str) -> bool:
    """Whether `name` reads as a hub model: GPT-2's names or an `org/name` repository id that
    does not read as a local path."""
    if looks_local(name):
        return False
    return name.removeprefix(f"{HUB_ORG}/") in HUB_NAMES or REPO_ID.fullmatch(name) is not None


def looks_local(name: str) -> bool:
    """Whether `name` reads as a local path, never a hub repository: it starts with ./, ../, /
    or ~, ends in a separator, or its first part exists here (`runs/gtp2` where runs/ exists
    is a typo of a run's folder, not the hub's `runs` organisation).

    >>> looks_local("./gpt2"), looks_local("/tmp/x"), looks_local("me/model/"), looks_local("gpt2")
    (True, True, True, False)
    """
    first, separator, _ = name.partition("/")
    return (
        name.startswith(("./", "../", "/", "~"))
        or name.endswith(("/", os.sep))
        or (bool(separator) and Path(first).exists())
    )


def refuse_local_name(name: str) -> None:
    """ModelNotFoundError for a `name` that is not a model folder here but reads as a local
    path (`looks_local`): it names a folder that does not exist, not a hub repository."""
    if looks_local(name):
        exists = Path(name).expanduser().exists()
        what = "not a model directory" if exists else "no such model directory"
        raise ModelNotFoundError(
            f"{name}: {what} (a local path, so it is not looked up on the Hugging Face hub)"
        )


def _hub_host() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT.split("://")[-1].split("/")[0]


def download_hub_model(name: str) -> Path:
    """The local folder of hub model `name` (HUB_FILES that it has), downloading if needed."""
    from huggingface_hub import snapshot_download

    repo = name if "/" in name else f"{HUB_ORG}/{name}"
    hint = (
        f"cannot download {name!r} from the Hugging Face hub (offline?); on a connected machine "
        f"run `hf download {repo} --local-dir DIR` (older clients: `huggingface-cli download "
        f"...`), copy DIR here and pass DIR instead"
    )

    def fetch(local_only: bool) -> Path:
        folder = snapshot_download(
            repo, allow_patterns=list(HUB_FILES), local_files_only=local_only
        )
        if not (Path(folder) / "config.json").is_file():
            raise FileNotFoundError(f"{repo} has no config.json")
        return Path(folder)

    try:
        return fetch(local_only=True)
    except Exception:  # not in the local cache: download
        pass
    proxied = any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY"))
    if not proxied:
        try:
            socket.create_connection((_hub_host(), 443), timeout=5).close()
        except OSError:
            raise ModelNotFoundError(hint) from None
    try:
        return fetch(local_only=False)
    except Exception as e:  # offline mode, HTTP errors, timeouts, no such repository
        raise ModelNotFoundError(f"{hint} ({type(e).__name__})") from None
