"""Shared fixtures: the tiny model preset and the real data in ../shared/data.

Tests that need the shared data use the `shared_data` fixture, which skips with a clear reason
when the folder is absent (a user's fresh clone has no ../shared).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from gpt.config import GPTConfig, model_preset

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real public data beside the project root; skip when it is absent."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"real test data not found at {SHARED_DATA} (only present on dev/CI machines)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def gpt2_bpe_dir(shared_data: Path) -> Path:
    """The original GPT-2 BPE files (encoder.json, vocab.bpe)."""
    return shared_data / "gpt2"


@pytest.fixture(autouse=True, scope="session")
def _gpt2_files_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Point the GPT-2 encoding at the local BPE files, so no test tries the network."""
    if (SHARED_DATA / "gpt2" / "vocab.bpe").is_file():
        os.environ.setdefault("GPT2_BPE_DIR", str(SHARED_DATA / "gpt2"))


@pytest.fixture
def tiny_config() -> GPTConfig:
    """The tiny model every test uses."""
    return model_preset("tiny")
