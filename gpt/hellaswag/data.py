"""HellaSwag's data: download a split once, find it, read and validate its items.

    python hellaswag.py -m gpt2          (downloads the val split on first use)

Each item is a context `ctx`, four `endings` and the `label` of the right one. The val split is
downloaded from the HellaSwag repository, at a pinned commit, into env HELLASWAG_DIR (else
~/.cache/gpt-alpha/hellaswag) once; env HELLASWAG_FILE names a local copy instead. A download is
cached only when whole (its item count, its SHA-256 where pinned, every item valid), and a cached
file that is not whole is removed with one line and fetched again. A malformed item is an error
naming its file and line.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt.cli import UserError, excerpt
from gpt.fsio import atomic_path

# A commit of rowanz/hellaswag, not a branch: what a URL names cannot change under a cached copy.
HELLASWAG_COMMIT = "6774d74db0a963013d28bd9323c32de8dd506038"
HELLASWAG_URL = (
    f"https://raw.githubusercontent.com/rowanz/hellaswag/{HELLASWAG_COMMIT}/data/"
    "hellaswag_{split}.jsonl"
)
SPLITS = ("val", "train")  # the test split has no labels


@dataclass(frozen=True)
class SplitFile:
    """What a whole download of one split is."""

    items: int
    """Lines, one item each."""
    sha256: str | None
    """SHA-256 of the file; None where not pinned (then the count and every item's validity
    are what tell a whole file from one cut short)."""


# The published item counts. The hashes are not pinned: the repository could not be reached
# where this was written, and the copy in ../shared/data is a derived export (another hash).
SPLIT_FILES = {"val": SplitFile(10_042, None), "train": SplitFile(39_905, None)}
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
    return cached_split(split, cache_dir())


def cached_split(split: str, dest_dir: Path) -> Path | None:
    """The split's downloaded file in `dest_dir` when it is whole (`split_problem`), else None.
    One that is not (cut short by an older download, damaged on disk) is removed with one line
    on stderr, so that it is fetched again."""
    cached = dest_dir / f"hellaswag_{split}.jsonl"
    if not cached.is_file():
        return None
    problem = split_problem(cached, split)
    if problem is None:
        return cached
    print(
        f"hellaswag: {cached} is not a whole download ({problem}): removed, to be fetched again",
        file=sys.stderr,
        flush=True,
    )
    cached.unlink(missing_ok=True)
    return None


def split_problem(path: Path, split: str) -> str | None:
    """Why `path` is not a whole download of `split` (its line count, the first invalid item: a
    file cut inside a line, its SHA-256 where pinned), or None when it is."""
    expected = SPLIT_FILES[split]
    data = path.read_bytes()
    lines = data.splitlines()
    if len(lines) != expected.items:
        return f"{len(lines):,} lines, expected {expected.items:,}"
    try:
        for lineno, line in enumerate(lines, 1):
            _validated(_decoded(line, f"{path}:{lineno}"), f"{path}:{lineno}")
    except HellaSwagError as e:
        return str(e)
    digest = hashlib.sha256(data).hexdigest()
    if expected.sha256 is not None and digest != expected.sha256:
        return f"SHA-256 {digest[:16]}..., expected {expected.sha256}"
    return None


def download_split(split: str = "val", dest_dir: Path | None = None) -> Path:
    """Download one split from the HellaSwag repository into `dest_dir` once: written
    atomically, and kept only when whole (`split_problem`)."""
    dest_dir = cache_dir() if dest_dir is None else dest_dir
    cached = cached_split(split, dest_dir)
    if cached is not None:
        return cached
    dest = dest_dir / f"hellaswag_{split}.jsonl"
    url = HELLASWAG_URL.format(split=split)
    dest_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        _fetch(url, tmp, dest)
        problem = split_problem(tmp, split)
        if problem is not None:  # raised inside the block: the temp file is removed
            raise HellaSwagError(f"{url}: the download is not whole ({problem}); nothing cached")
    return dest


def _fetch(url: str, tmp: Path, dest: Path) -> None:
    """`url`'s content into the file `tmp`; HellaSwagError (offline, HTTP errors) naming `dest`,
    where the user may put the file instead."""
    try:
        with tmp.open("wb") as f, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as r:
            shutil.copyfileobj(r, f)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise HellaSwagError(
            f"cannot download {url} ({reason}); fetch that file to {dest}"
        ) from None


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
                yield lineno, _decoded(raw, f"{path}:{lineno}")
    except OSError as e:
        raise HellaSwagError(f"{path}: cannot read ({e.strerror})") from None


def _decoded(raw: bytes, where: str) -> str:
    """A line's text; HellaSwagError naming `where` when it is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HellaSwagError(f"{where}: not UTF-8 text ({e.reason})") from None


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
        raise HellaSwagError(f"{where}: 'label' must be 0-{N_ENDINGS - 1}, got {excerpt(label)}")
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
