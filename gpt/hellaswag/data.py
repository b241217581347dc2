"""HellaSwag's data: download a split once, find it, read and validate its items.

    python hellaswag.py -m gpt2          (downloads the val split on first use)

Each item is a context `ctx`, four `endings` and the `label` of the right one. The val split is
downloaded from the HellaSwag repository into env HELLASWAG_DIR (else ~/.cache/gpt-alpha/hellaswag)
once; env HELLASWAG_FILE names a local copy instead. A malformed item is an error naming its file
and line.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gpt.cli import UserError
from gpt.fsio import atomic_path

HELLASWAG_URL = (
    "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_{split}.jsonl"
)
SPLITS = ("val", "train")  # the test split has no labels
N_ENDINGS = 4
# Seconds a download may wait to connect or for more data: offline (a firewall that drops
# packets), training goes on without HellaSwag after this, not after minutes.
DOWNLOAD_TIMEOUT_S = 10


class HellaSwagError(UserError):
    """The HellaSwag file is missing, cannot be fetched, or is malformed."""


def cache_dir() -> Path:
    """Where downloaded splits live: env HELLASWAG_DIR, else ~/.cache/gpt-alpha/hellaswag."""
    env = os.environ.get("HELLASWAG_DIR")
    return Path(env) if env else Path.home() / ".cache" / "gpt-alpha" / "hellaswag"


def find_hellaswag_file(path: str | None = None, split: str = "val") -> Path | None:
    """The split's jsonl: `path` if given, else (val split) env HELLASWAG_FILE, else the download
    cache. Returns None when the file is not there; never downloads, never raises for absence.
    """
    if path is not None:
        return Path(path) if Path(path).is_file() else None
    env = os.environ.get("HELLASWAG_FILE")
    if split == "val" and env and Path(env).is_file():
        return Path(env)
    cached = cache_dir() / f"hellaswag_{split}.jsonl"
    return cached if cached.is_file() else None


def download_split(split: str = "val", dest_dir: Path | None = None) -> Path:
    """Download one split from the HellaSwag repository into `dest_dir` (atomic), once."""
    dest_dir = cache_dir() if dest_dir is None else dest_dir
    dest = dest_dir / f"hellaswag_{split}.jsonl"
    if dest.is_file():
        return dest
    url = HELLASWAG_URL.format(split=split)
    dest_dir.mkdir(parents=True, exist_ok=True)
    try:
        with (
            atomic_path(dest) as tmp,
            tmp.open("wb") as f,
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
        ):
            shutil.copyfileobj(response, f)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise HellaSwagError(
            f"cannot download {url} ({reason}); fetch that file to {dest}"
        ) from None
    return dest


def load_examples(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Read HellaSwag items (`ctx`, `endings` (4 strings), `label` 0-3) from a jsonl file.

    Other fields are kept. Raises HellaSwagError naming the file and line of a bad item.
    """
    path = Path(path)
    if not path.is_file():
        raise HellaSwagError(f"no such HellaSwag file: {path}")
    examples: list[dict[str, Any]] = []
    for lineno, line in _numbered_lines(path):
        if limit is not None and len(examples) >= limit:
            break
        if line.strip():
            examples.append(_validated(line, f"{path}:{lineno}"))
    if not examples:
        raise HellaSwagError(f"{path}: no HellaSwag items")
    return examples


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number from 1, line) of a UTF-8 text file; HellaSwagError naming the file, and the
    line that is not UTF-8 (decoded line by line: a text-mode file decodes ahead, in blocks)."""
    try:
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    yield lineno, raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise HellaSwagError(f"{path}:{lineno}: not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise HellaSwagError(f"{path}: cannot read ({e.strerror})") from None


def _validated(line: str, where: str) -> dict[str, Any]:
    """One parsed, checked item; labels given as strings ("2") become ints."""
    try:
        ex = json.loads(line)
    except json.JSONDecodeError as e:
        raise HellaSwagError(f"{where}: not JSON ({e.msg})") from None
    if not isinstance(ex, dict) or not isinstance(ex.get("ctx"), str):
        raise HellaSwagError(f"{where}: an item needs a string 'ctx'")
    endings = ex.get("endings")
    if not (
        isinstance(endings, list)
        and len(endings) == N_ENDINGS
        and all(isinstance(e, str) for e in endings)
    ):
        raise HellaSwagError(f"{where}: 'endings' must be a list of {N_ENDINGS} strings")
    label = ex.get("label")
    if isinstance(label, str) and label.isascii() and label.isdigit():
        label = int(label)
    if not isinstance(label, int) or not 0 <= label < N_ENDINGS:
        raise HellaSwagError(f"{where}: 'label' must be 0-{N_ENDINGS - 1}, got {label!r}")
    return {**ex, "label": label}


def resolve_data(data: str | None, split: str) -> Path:
    """--data if given, else HELLASWAG_FILE or the cache, else a download into the cache."""
    if data is not None:
        if not Path(data).is_file():
            raise HellaSwagError(f"no such HellaSwag file: {data}")
        return Path(data)
    found = find_hellaswag_file(None, split)
    if found is not None:
        return found
    try:
        return download_split(split)
    except HellaSwagError as e:
        raise HellaSwagError(f"{e} or pass --data FILE") from None
