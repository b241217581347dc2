"""An export and its upload: `python -m gpt.hf export` fills a fresh folder that replaces an
earlier export whole (its stale files never survive), refuses to replace any other folder, and
--push-to-hub sends exactly the files the export wrote, to a private repository when asked.

The hub is a stand-in for huggingface_hub's HfApi (no network here) that records what would be
sent; the export itself runs as a user runs it, from a working directory with relative paths.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import huggingface_hub
import pytest
import torch
from safetensors.torch import save_file

from gpt import hf
from gpt.checkpoint import save_model_dir
from gpt.cli import run
from gpt.config import GPTConfig
from gpt.data.tokeniser import GPTTokeniser
from gpt.model.gpt2 import GPT

ROOT = Path(__file__).resolve().parent.parent
# What an export of a checkpoint with its own .tkn tokeniser writes.
EXPORT_FILES = [
    "README.md",
    "config.json",
    "model.safetensors",
    "special_tokens_map.json",
    "tokeniser.tkn",
    "tokenizer.json",
    "tokenizer_config.json",
]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory (the current one) holding `ckpt/`: a small model with its own
    300-token tokeniser, and `out/`: an earlier export of it, plus what an earlier export of
    another model, or a user, left there."""
    tok = GPTTokeniser.train(["The quick brown fox jumps over the lazy dog. 1234!"] * 20, 300)
    tok.save(tmp_path / "small.tkn")
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=300, n_layer=1, n_head=2, n_embd=16))
    save_model_dir(model, tmp_path / "ckpt", str(tmp_path / "small.tkn"), tok.fingerprint)
    monkeypatch.chdir(tmp_path)
    run_export("ckpt", "out")
    stale = {"transformer.wte.weight": torch.ones(300, 16)}  # a sharded export's leftovers
    save_file(stale, tmp_path / "out" / "model-00001-of-00001.safetensors")
    index = '{"weight_map": {"transformer.wte.weight": "model-00001-of-00001.safetensors"}}'
    (tmp_path / "out" / "model.safetensors.index.json").write_text(index)
    (tmp_path / "out" / "notes.txt").write_text("HF_TOKEN=hf_not_for_the_hub\n")
    return tmp_path


def run_export(*args: str) -> None:
    """`python -m gpt.hf export ARGS` in this process (the hub stand-in lives here)."""
    with pytest.raises(SystemExit) as e:
        run(hf.main, ["export", *args])
    assert e.value.code == 0


class FakeHub:
    """huggingface_hub.HfApi's calls that a push makes, recorded; the repository already holds
    `remote` files and is private or not."""

    def __init__(self, remote: list[str], private: bool = False) -> None:
        self.remote, self.private = remote, private
        self.created: dict[str, Any] = {}
        self.operations: list[Any] | None = None

    def create_repo(self, repo_id: str, **kwargs: Any) -> None:
        self.created = {"repo_id": repo_id, **kwargs}

    def repo_info(self, repo_id: str) -> SimpleNamespace:
        return SimpleNamespace(private=self.private)

    def list_repo_files(self, repo_id: str) -> list[str]:
        return self.remote

    def create_commit(self, repo_id: str, operations: list[Any], **kwargs: Any) -> Any:
        self.operations = list(operations)
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/0123")


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    fake = FakeHub([".gitattributes", "README.md", "notes.md", "model-00001-of-00002.safetensors"])
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: fake)
    return fake


def test_an_export_replaces_an_earlier_one_whole(workdir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gpt.hf", "export", "ckpt", "out"],
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(workdir / "out")) == EXPORT_FILES  # nothing stale survives
    assert not [p for p in os.listdir(workdir) if p.startswith(".out")]  # no temp folder left
    loaded = hf.from_pretrained(workdir / "out")  # the stale index no longer wins
    assert not torch.equal(loaded.transformer.wte.weight, torch.ones(300, 16))


@pytest.mark.parametrize("kind", ["run directory", "our checkpoint", "a file"])
def test_an_export_never_replaces_anything_else(
    workdir: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    target = {"run directory": "runs/x", "our checkpoint": "ckpt", "a file": "small.tkn"}[kind]
    if kind == "run directory":
        (workdir / "runs/x").mkdir(parents=True)
        (workdir / "runs/x/config.json").write_text('{"model": "tiny"}')
        (workdir / "runs/x/notes.txt").write_text("mine")
    before = sorted(p.name for p in (workdir / target).parent.iterdir())
    with pytest.raises(SystemExit) as e:
        run(hf.main, ["export", "ckpt", target])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {target}: exists and is not an earlier export"), err
    assert sorted(p.name for p in (workdir / target).parent.iterdir()) == before
    assert (workdir / "ckpt" / "model.safetensors").is_file()


def test_push_sends_exactly_the_exported_files_to_a_private_repo(
    workdir: Path, hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.private = True  # what the hub reports once the repository is created private
    run_export("ckpt", "out", "--push-to-hub", "me/tiny", "--private")
    assert hub.created == {"repo_id": "me/tiny", "exist_ok": True, "private": True}
    assert hub.operations is not None
    added = [op for op in hub.operations if isinstance(op, huggingface_hub.CommitOperationAdd)]
    deleted = [op for op in hub.operations if isinstance(op, huggingface_hub.CommitOperationDelete)]
    assert sorted(op.path_in_repo for op in added) == EXPORT_FILES  # no notes.txt, no stale shard
    for op in added:
        assert Path(op.path_or_fileobj).resolve() == (workdir / "out" / op.path_in_repo).resolve()
    # the repository's earlier weights shard would be read with ours: deleted; its other files stay
    assert [op.path_in_repo for op in deleted] == ["model-00001-of-00002.safetensors"]
    assert "https://huggingface.co/me/tiny/commit/0123" in capsys.readouterr().out


def test_without_private_the_hub_default_decides(workdir: Path, hub: FakeHub) -> None:
    run_export("ckpt", "out", "--push-to-hub", "me/tiny")
    assert hub.created["private"] is None  # not False: an organisation's private default holds


def test_private_push_to_an_existing_public_repo_is_refused(
    workdir: Path, hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        run(hf.main, ["export", "ckpt", "out", "--push-to-hub", "me/tiny", "--private"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: me/tiny exists and is public") and "\n" not in err
    assert hub.operations is None  # nothing uploaded


def test_private_needs_a_repository(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        run(hf.main, ["export", "ckpt", "elsewhere", "--private"])
    assert e.value.code == 2 and "--push-to-hub" in capsys.readouterr().err
    assert not (workdir / "elsewhere").exists()
