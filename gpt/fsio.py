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

Crash safety. A rename is followed by an fsync of the folder that holds it (the rename itself
reaches the disk). A directory replaces another in one atomic exchange (Linux renameat2), so the
old one stays until the new one is in place; where the file system has no exchange, the old one
is moved aside to `.NAME.old` first, and the next write of NAME puts it back if the new one never
arrived (`recover_dir`). Temp folders are named `.NAME.tmp-XXXXXXXX`, and the next write of
NAME removes those a crash left; temp files `.NAME.XXXXXXXX.tmp`, which `temp_files` finds for
the folder's owner to remove (several processes may write one file, a download cache's). Files
get the mode a plain open() gives (0666 less the umask, applied by the OS: the umask is never
changed, as it is the whole process's).

A full disk. A write that fails for want of space (ENOSPC or EDQUOT, or a writer's own error
while no space is left: torch.save's "basic_ios::clear: iostream error" or "unexpected pos",
safetensors' "No space left on device") removes its temp file and raises DiskFullError naming
the target and the space left; the target keeps its old content.

Fault injection (the crash-consistency tests): each write, fsync, rename and removal this module
makes is a numbered step. With GPT_FAULT_AT=k in the environment the process ends at once
(os._exit(FAULT_EXIT_STATUS)) instead of making step k; with GPT_FAULT_COUNT=FILE it writes the
number of steps made so far into FILE after each one (a dry run that counts them).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from gpt.cli import DISK_FULL_ERRNOS, DiskFullError, UserError

FAULT_AT_ENV = "GPT_FAULT_AT"
FAULT_COUNT_ENV = "GPT_FAULT_COUNT"
FAULT_EXIT_STATUS = 86
"""The exit status of a process ended by GPT_FAULT_AT."""
# Writers that are not Python file objects report a full disk in their own words.
DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded")
FULL_BELOW_BYTES = 1 << 20
"""Free space under which a writer's RuntimeError (torch's C++ stream) counts as a full disk."""
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100

_steps_made = 0


def _step(what: str, path: Path) -> None:
    """A fault point before a write, fsync, rename or removal of `path` (see the module's
    docstring): counted, and the process's end when GPT_FAULT_AT names it."""
    global _steps_made
    _steps_made += 1
    count_file = os.environ.get(FAULT_COUNT_ENV)
    if count_file:
        Path(count_file).write_text(f"{_steps_made}\n")
    if os.environ.get(FAULT_AT_ENV) == str(_steps_made):
        os.write(2, f"fault injected: step {_steps_made}, {what} {path}\n".encode())
        os._exit(FAULT_EXIT_STATUS)


# ----------------------------------------------------------------------------- flushing, renaming


def _fsync(path: Path) -> None:
    """Flush a file's data to disk (a fault point)."""
    _step("fsync", path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename or a new name in it) to disk, where the OS allows it
    (Windows opens no folder; some file systems refuse to fsync one)."""
    _step("fsync", folder)
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def replace_durably(source: str | Path, target: str | Path) -> None:
    """Rename `source` over `target` (atomic), then fsync the folder so the rename survives a
    crash (a fault point)."""
    source, target = Path(source), Path(target)
    _step("rename", target)
    os.replace(source, target)
    _fsync_dir(target.parent)


def _remove(path: Path) -> None:
    """Delete a file or a folder tree (a fault point); nothing if it is gone."""
    _step("remove", path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    """libc's renameat2 (Linux, glibc >= 2.28), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    path, fd = ctypes.c_char_p, ctypes.c_int
    function.argtypes = [fd, path, fd, path, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _exchange(a: Path, b: Path) -> bool:
    """Swap the paths `a` and `b` in one atomic step; False (nothing done) where the OS or the
    file system cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    _step("rename", b)
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        _fsync_dir(b.parent)
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


# ----------------------------------------------------------------------------- a full disk


def _free_bytes(folder: Path) -> int:
    """Bytes free to this user on the file system holding `folder`."""
    return shutil.disk_usage(folder).free


def human_size(n: int) -> str:
    """A byte count for people.

    >>> human_size(512), human_size(98_304), human_size(3 * 2**30)
    ('512 bytes', '96.0 KiB', '3.0 GiB')
    """
    if n < 1024:
        return f"{n} bytes"
    value = n / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _for_want_of_space(e: BaseException, folder: Path) -> bool:
    """Whether the failed write `e` in `folder` ran out of disk space (judged before its temp
    is removed: torch's C++ writer gives no errno, so then the free space decides)."""
    if isinstance(e, DiskFullError):
        return True
    if isinstance(e, OSError):
        return e.errno in DISK_FULL_ERRNOS
    if not isinstance(e, Exception):  # KeyboardInterrupt, SystemExit
        return False
    if any(text in str(e) for text in DISK_FULL_TEXT):
        return True
    return isinstance(e, RuntimeError) and _free_bytes(folder) < FULL_BELOW_BYTES


def _held_bytes(path: Path) -> int:
    """The disk space that the file or folder tree `path` takes."""
    total = 0
    for each in [path, *path.rglob("*")] if path.is_dir() else [path]:
        with suppress(OSError):  # gone meanwhile
            total += each.lstat().st_blocks * 512
    return total


def _disk_full(target: Path, free: int | None = None) -> DiskFullError:
    """The error for `target`, not written for want of space; `free`: the bytes free once its
    temp is gone (default: those free now)."""
    free = _free_bytes(target.parent) if free is None else free
    return DiskFullError(f"{target}: not written, the disk is full ({human_size(free)} free)")


@contextmanager
def _naming_a_full_disk(target: Path) -> Iterator[None]:
    """ENOSPC or EDQUOT in the block becomes DiskFullError naming `target`."""
    try:
        yield
    except OSError as e:
        if e.errno in DISK_FULL_ERRNOS:
            raise _disk_full(target) from e
        raise


@contextmanager
def _removed_on_failure(target: Path, temp: Path) -> Iterator[None]:
    """Remove `temp` when the block fails; a failure for want of space becomes DiskFullError
    naming `target` (an inner writer's included: the outermost target is what the user asked
    for)."""
    try:
        yield
    except BaseException as e:
        full = _for_want_of_space(e, temp.parent)
        # Counted before the temp goes: a failed writer may hold it open (torch.save's, from
        # the traceback), and the file system gives its space back only once it is closed.
        free = _free_bytes(temp.parent) + _held_bytes(temp) if full else 0
        _remove(temp)
        if full:
            raise _disk_full(target, free) from e
        raise


# ----------------------------------------------------------------------------- files


def make_dirs(folder: str | Path) -> None:
    """Create `folder` and its missing parents (as mkdir -p), each new name made durable."""
    folder = Path(folder)
    if folder.is_dir():
        return
    make_dirs(folder.parent)
    _step("write", folder)
    folder.mkdir(exist_ok=True)
    _fsync_dir(folder.parent)


def temp_files(path: str | Path) -> list[Path]:
    """The temp files that writes of `path` left beside it, cut short by a crash."""
    path = Path(path)
    return _beside(path, rf"\.{re.escape(path.name)}\.[0-9a-f]{{8}}\.tmp")


def _beside(path: Path, pattern: str) -> list[Path]:
    """The entries of `path`'s folder whose whole name matches `pattern`."""
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir() if re.fullmatch(pattern, p.name))


def _new_temp_file(path: Path) -> Path:
    """A new empty file `.NAME.XXXXXXXX.tmp` beside `path`, with the mode open() would give."""
    _step("write", path)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            with _naming_a_full_disk(path):
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp file path beside `path` for a writer that wants a file name (safetensors,
    shutil.copyfile); when the block succeeds, the file is synced and renamed over `path`."""
    path = Path(path)
    tmp = _new_temp_file(path)
    with _removed_on_failure(path, tmp):
        yield tmp
        _fsync(tmp)
        replace_durably(tmp, path)


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

    >>> import tempfile
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


# ----------------------------------------------------------------------------- directories


def _old_dir(out_dir: Path) -> Path:
    """Where a replaced folder waits while the new one is renamed in (no exchange available)."""
    return out_dir.with_name(f".{out_dir.name}.old")


def _temp_dirs(out_dir: Path) -> list[Path]:
    """The temp folders of writes of `out_dir` (`.NAME.tmp-XXXXXXXX`) beside it."""
    return _beside(out_dir, rf"\.{re.escape(out_dir.name)}\.tmp-[0-9a-f]{{8}}")


def recover_dir(out_dir: str | Path) -> None:
    """Finish what a crash cut short in a replacement of the folder `out_dir` (by `atomic_dir`,
    one writer at a time): the old folder is put back where the new one never arrived, or removed
    where it did, and temp folders are removed."""
    out_dir = Path(out_dir)
    old = _old_dir(out_dir)
    if old.is_dir():
        if out_dir.exists():
            _remove(old)
        else:
            replace_durably(old, out_dir)
    for tmp in _temp_dirs(out_dir):
        _remove(tmp)


def _sync_tree(folder: Path) -> None:
    """Flush every file and folder under `folder`, then `folder` itself."""
    for path in sorted(folder.rglob("*"), reverse=True):  # a folder after what it holds
        if path.is_symlink():
            continue
        if path.is_dir():
            _fsync_dir(path)
        else:
            _fsync(path)
    _fsync_dir(folder)


def _put_in_place(new: Path, out_dir: Path) -> None:
    """Make the finished folder `new` be `out_dir`; the old `out_dir` stays until then."""
    if not out_dir.exists():
        replace_durably(new, out_dir)
    elif _exchange(new, out_dir):  # `new` now holds the old folder
        _remove(new)
    else:
        replace_durably(out_dir, _old_dir(out_dir))
        try:
            replace_durably(new, out_dir)
        finally:
            recover_dir(out_dir)  # the old folder removed, or put back if the new one failed


@contextmanager
def atomic_dir(out_dir: str | Path) -> Iterator[Path]:
    """A temp folder beside `out_dir` to fill; on success it replaces `out_dir` in one step
    (a reader sees the old directory or the new one, never a half-written one)."""
    out_dir = Path(out_dir)
    make_dirs(out_dir.parent)
    recover_dir(out_dir)
    _step("write", out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{secrets.token_hex(4)}")
    with _naming_a_full_disk(out_dir):
        tmp.mkdir()
    with _removed_on_failure(out_dir, tmp):
        yield tmp
        _sync_tree(tmp)
        _put_in_place(tmp, out_dir)
