"""Atomic writes (a file or a directory appears whole or not at all) and the validated read of
a JSON object file: the project's only copies.

Every writer fills a temporary file (or folder) beside its target, flushes it to disk and then
renames it over the target in one step, so a reader, or a run resumed after a crash, sees the
old content or the new, never half of one:

    >>> import json, tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> write_json_atomic(folder / "a.json", {"step": 3})
    >>> json.loads((folder / "a.json").read_text())
    {'step': 3}
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from gpt.cli import UserError


def _umask() -> int:
    """The process's umask (temp files are created 0600 and folders 0700; the results get the
    usual modes)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to disk where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp file path beside `path` for a writer that wants a file name (safetensors,
    shutil.copyfile); when the block succeeds, the file is synced and renamed over `path`."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_write(path: str | Path) -> Iterator[IO[bytes]]:
    """A binary file object whose content replaces `path` only when the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        yield f


def read_json_object(
    path: str | Path, error: type[UserError] = UserError, what: str = "JSON"
) -> dict[str, Any]:
    """The JSON object in the file `path`. A file that cannot be read, is not JSON or holds
    another kind of value raises `error` (a UserError) naming the file and `what` it is.

    >>> read_json_object(Path(tempfile.mkdtemp()) / "none.json")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    gpt.cli.UserError: .../none.json: cannot read (No such file or directory)
    """
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: damaged {what} ({e})") from None
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from None
    if not isinstance(obj, dict):
        raise error(f"{path}: not a JSON object")
    return obj


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8), atomically."""
    with atomic_write(path) as f:
        f.write(text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Replace `path` with `obj` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def copy_atomic(source: str | Path, path: str | Path) -> None:
    """Copy the file `source` to `path`, atomically."""
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)


@contextmanager
def atomic_dir(out_dir: str | Path) -> Iterator[Path]:
    """A temp folder beside `out_dir` to fill; on success it replaces `out_dir` in one rename
    (a reader sees the old directory or the new one, never a half-written one)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~_umask())
            _fsync(f)
        _fsync(tmp)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
        _fsync(out_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
