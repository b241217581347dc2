"""GPT-2 from the Hugging Face hub: the local folder of a hub model, downloaded once.

    python inference.py --model gpt2       (a hub name; gpt.hf.from_pretrained converts it)

Offline, the error says how to fetch the files on a connected machine and pass the folder.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from gpt.cli import UserError

HUB_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
HUB_ORG = "openai-community"
HUB_FILES = ("config.json", "model.safetensors")


class ModelNotFoundError(UserError):
    """No such model directory, or a hub model that cannot be downloaded."""


def _hub_host() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT.split("://")[-1].split("/")[0]


def download_hub_model(name: str) -> Path:
    """The local folder of hub model `name` (config.json + weights), downloading if needed."""
    from huggingface_hub import hf_hub_download

    repo = name if "/" in name else f"{HUB_ORG}/{name}"
    hint = (
        f"cannot download {name!r} from the Hugging Face hub (offline?); on a connected machine "
        f"run `hf download {repo} {' '.join(HUB_FILES)} --local-dir DIR` "
        f"(older clients: `huggingface-cli download ...`), copy DIR here and pass DIR instead"
    )

    def fetch(local_only: bool) -> Path:
        paths = [hf_hub_download(repo, f, local_files_only=local_only) for f in HUB_FILES]
        return Path(paths[-1]).parent

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
    except Exception as e:  # offline mode, HTTP errors, timeouts
        raise ModelNotFoundError(f"{hint} ({type(e).__name__})") from None
