"""gpt/fsio.py: a crash at any step of an atomic write leaves the old content or the new (a
directory too, with or without an atomic exchange), the leftovers are cleaned by the next write,
every rename is made durable by an fsync of its folder, and the umask is never changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpt import fsio
from gpt.fsio import FAULT_AT_ENV, FAULT_COUNT_ENV, FAULT_EXIT_STATUS

ROOT = Path(__file__).resolve().parent.parent

OLD = {"a": "old a", "c": "old c"}
NEW = {"a": "new a", "b": "new b"}
# Each writes NEW over OLD at ./target; "two renames" as on a file system without renameat2's
# exchange.
WRITERS = {
    "file": "fsio.write_json_atomic('target', NEW)",
    "folder": "with fsio.atomic_dir('target') as tmp:\n"
    "    for name, text in NEW.items(): (tmp / name).write_text(text)",
    "folder, two renames": "fsio._renameat2 = lambda: None\n"
    "with fsio.atomic_dir('target') as tmp:\n"
    "    for name, text in NEW.items(): (tmp / name).write_text(text)",
}


def make_old(folder: Path, writer: str) -> None:
    if writer == "file":
        fsio.write_json_atomic(folder / "target", OLD)
    else:
        (folder / "target").mkdir()
        for name, text in OLD.items():
            (folder / "target" / name).write_text(text)


def content(target: Path) -> dict[str, str] | None:
    """What `target` holds (a JSON file or a folder of text files); None when it is missing."""
    if target.is_dir():
        return {p.name: p.read_text() for p in target.iterdir()}
    return json.loads(target.read_text()) if target.exists() else None


def write(folder: Path, writer: str, **env: str) -> int:
    """Run the writer in a fresh process in `folder`; its exit status."""
    code = f"from gpt import fsio\nNEW = {NEW!r}\n{WRITERS[writer]}"
    run_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-c", code], cwd=folder, env=run_env).returncode


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_crash_at_any_step_leaves_old_or_new_and_the_next_write_cleans_up(
    tmp_path: Path, writer: str
) -> None:
    """Crash the writer at each of its steps (GPT_FAULT_AT): the target holds the old content
    or the new, never a mix nor nothing (with an exchange; two renames leave a moment without
    it, which `recover_dir`, the next write's first act, undoes); the next write then leaves
    the new content and nothing beside it."""
    count_file = tmp_path / "count"
    (tmp_path / "dry").mkdir()
    make_old(tmp_path / "dry", writer)
    assert write(tmp_path / "dry", writer, **{FAULT_COUNT_ENV: str(count_file)}) == 0
    n = int(count_file.read_text())
    assert n >= 4
    seen = set()
    for k in range(1, n + 1):
        folder = tmp_path / f"k{k}"
        folder.mkdir()
        make_old(folder, writer)
        assert write(folder, writer, **{FAULT_AT_ENV: str(k)}) == FAULT_EXIT_STATUS
        if writer != "folder, two renames":
            assert content(folder / "target") in (OLD, NEW), k
        if writer != "file":
            fsio.recover_dir(folder / "target")
            assert [p.name for p in folder.iterdir()] == ["target"], k
        after_crash = content(folder / "target")
        assert after_crash in (OLD, NEW), k
        seen.add(json.dumps(after_crash))
        assert write(folder, writer) == 0
        assert content(folder / "target") == NEW
        # a file's temp files stay for the folder's owner to clean (see prepare.py)
        leftovers = set(fsio.temp_files(folder / "target"))
        assert set(folder.iterdir()) - leftovers == {folder / "target"}, k
    assert len(seen) == 2  # some crash points came before the switch, some after


@pytest.fixture
def umask_027() -> Iterator[None]:
    """The umask 027 (files 0640, folders 0750), and no call of os.umask while it is set."""
    before = os.umask(0o027)
    real_umask = os.umask

    def refuse(mask: int) -> int:
        raise AssertionError("os.umask changes the umask of every thread of the process")

    os.umask = refuse  # type: ignore[assignment]
    try:
        yield
    finally:
        os.umask = real_umask
        os.umask(before)


def test_files_and_folders_get_the_usual_modes_without_touching_the_umask(
    tmp_path: Path, umask_027: None
) -> None:
    fsio.write_text_atomic(tmp_path / "text", "x")
    fsio.copy_atomic(tmp_path / "text", tmp_path / "copy")
    with fsio.atomic_dir(tmp_path / "folder") as tmp:
        fsio.write_text_atomic(tmp / "inner", "y")
        (tmp / "plain").write_text("z")
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.rglob("*")}
    assert modes == {
        "text": 0o640,
        "copy": 0o640,
        "folder": 0o750,
        "inner": 0o640,
        "plain": 0o640,
    }


@pytest.fixture
def syscalls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Path]]:
    """The renames ("rename", target; the exchange included) and fsyncs ("fsync", path) that
    gpt/fsio.py makes, in order."""
    calls: list[tuple[str, Path]] = []
    opened: dict[int, Path] = {}
    real_open, real_fsync, real_replace = os.open, os.fsync, os.replace
    real_renameat2 = fsio._renameat2()

    def spy_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        fd = real_open(path, flags, *args, **kwargs)
        opened[fd] = Path(path)
        return fd

    def spy_fsync(fd: int) -> None:
        calls.append(("fsync", opened[fd]))
        real_fsync(fd)

    def spy_replace(source: Any, target: Any) -> None:
        real_replace(source, target)
        calls.append(("rename", Path(target)))

    def spy_renameat2(*args: Any) -> int:
        result = real_renameat2(*args)  # type: ignore[misc]
        calls.append(("rename", Path(os.fsdecode(args[3]))))
        return result

    monkeypatch.setattr(fsio.os, "open", spy_open)
    monkeypatch.setattr(fsio.os, "fsync", spy_fsync)
    monkeypatch.setattr(fsio.os, "replace", spy_replace)
    if real_renameat2 is not None:
        monkeypatch.setattr(fsio, "_renameat2", lambda: spy_renameat2)
    return calls


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two renames"])
def test_every_rename_is_followed_by_an_fsync_of_its_folder(
    tmp_path: Path,
    syscalls: list[tuple[str, Path]],
    monkeypatch: pytest.MonkeyPatch,
    exchange: bool,
) -> None:
    if not exchange:
        monkeypatch.setattr(fsio, "_renameat2", lambda: None)
    fsio.write_text_atomic(tmp_path / "f", "x")
    for _ in range(2):  # a new folder, then one replaced
        with fsio.atomic_dir(tmp_path / "d" / "e") as tmp:
            (tmp / "g").write_text("y")
    renames = [i for i, (kind, _) in enumerate(syscalls) if kind == "rename"]
    assert len(renames) == (3 if exchange else 4)
    for i in renames:
        assert syscalls[i + 1] == ("fsync", syscalls[i][1].parent), syscalls
    # the new files' data, and the new folders' names, reached the disk before they were used
    assert ("fsync", tmp_path / "d") in syscalls and ("fsync", tmp_path) in syscalls


def test_fault_points_are_counted_and_the_crash_is_at_the_named_one(tmp_path: Path) -> None:
    count_file = tmp_path / "count"
    make_old(tmp_path, "file")
    assert write(tmp_path, "file", **{FAULT_COUNT_ENV: str(count_file)}) == 0
    assert int(count_file.read_text()) == 4  # temp file, its fsync, the rename, the folder's fsync
    assert write(tmp_path, "file", **{FAULT_AT_ENV: "5"}) == 0
    done = subprocess.run(
        [sys.executable, "-c", f"from gpt import fsio\nNEW = {NEW!r}\n{WRITERS['file']}"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), FAULT_AT_ENV: "3"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == FAULT_EXIT_STATUS
    assert done.stderr == "fault injected: step 3, rename target\n"
