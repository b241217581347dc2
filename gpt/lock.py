"""One process at a time in a directory: an advisory lock on a run directory (held by training's
rank 0 for the run's life) or on a data directory being prepared (fineweb.py, prepare_dataset).

    with hold("runs/x"):
        ...  # meanwhile, a second process that asks for runs/x is refused at once, one line:
             # error: runs/x is in use by process 4242 on node0 (lock runs/x/.lock); ...

The lock is `fcntl.flock` on DIR/.lock, which the holder's open file keeps: the kernel releases
it when the process ends, however it ends (SIGKILL and power loss included), so a stale lock
never needs cleaning up. The holder writes its PID and host into the file for the refusal to
name, and empties it when it lets go. The file itself stays: a process that removed it could
let a second one lock a new file of the same name while a third still holds the old one. (The
PID is written in place, not by an atomic rename: a rename would put a new, unlocked file under
the name; a reader that finds the file empty for a moment waits for the PID.)

The lock is advisory (only our commands ask for it) and re-entrant within a process: the demo
holds its run directory while `train` takes it again. Forked children share the holder's open
file, so a worker process that outlives its parent holds the lock until it ends too. On a
network file system it holds across machines where the file system supports flock (NFS since
Linux 2.6.12). No torch here: the data-preparation modules use it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gpt.cli import UserError

LOCK_FILE = ".lock"
HOST_NAME = re.compile(r"[\w.-]{1,253}")
HOLDER_WAIT_S = 0.5
"""How long a refused process waits for a new holder to write its PID."""


@dataclass
class _Held:
    fd: int
    depth: int


# This process's locks, by the lock file's resolved path (flock conflicts between two open
# files of one process too, so a second `acquire` here must reuse the first's).
_held: dict[Path, _Held] = {}


def lock_file(directory: str | Path) -> Path:
    """DIR/.lock, the file whose flock is DIR's lock."""
    return Path(directory) / LOCK_FILE


def acquire(directory: str | Path) -> None:
    """Take `directory`'s lock (creating the directory if needed), or raise UserError naming the
    process that holds it. Pair with `release`."""
    path = lock_file(directory)
    key = path.resolve()
    held = _held.get(key)
    if held is not None:
        held.depth += 1
        return
    if Path(directory).exists() and not Path(directory).is_dir():
        raise UserError(f"{directory}: exists and is not a folder")
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise UserError(f"{path}: cannot create the lock file ({e.strerror or e})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = _holder(fd) if e.errno in (errno.EWOULDBLOCK, errno.EACCES) else None
        os.close(fd)
        if holder is None:
            raise UserError(f"{path}: cannot lock ({e.strerror or e})") from None
        raise UserError(
            f"{directory} is in use by {holder} (lock {path}); wait for it to end, or stop it"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    _held[key] = _Held(fd, 1)


def release(directory: str | Path) -> None:
    """Let go of a lock `acquire` took (the outermost release empties the file and unlocks)."""
    key = lock_file(directory).resolve()
    held = _held[key]
    held.depth -= 1
    if held.depth > 0:
        return
    del _held[key]
    try:
        os.ftruncate(held.fd, 0)  # no stale PID for a reader to report
    finally:
        os.close(held.fd)  # the kernel drops the flock with the last open file


@contextmanager
def hold(directory: str | Path) -> Iterator[None]:
    """`acquire` for the block, `release` after it."""
    acquire(directory)
    try:
        yield
    finally:
        release(directory)


def _holder(fd: int) -> str:
    """Who holds the lock on the file `fd`: "process PID on HOST", as the holder wrote it
    (waiting up to HOLDER_WAIT_S for a holder that has locked but not yet written; the words are
    checked, as any file may have been put there)."""
    deadline = time.monotonic() + HOLDER_WAIT_S
    while True:
        words = os.pread(fd, 256, 0).decode("utf-8", errors="replace").split()
        if len(words) == 2 and words[0].isdigit() and HOST_NAME.fullmatch(words[1]):
            return f"process {words[0]} on {words[1]}"
        if time.monotonic() >= deadline:
            return "another process"
        time.sleep(0.02)
