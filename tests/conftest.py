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


@pytest.fixture(scope="session")
def tiny_hf_gpt2_dir(gpt2_bpe_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face GPT-2 directory: random weights (2 layers, 32 wide, 128 positions, the real
    50,257-token vocabulary) and the GPT-2 tokenizer files (vocab.json, merges.txt)."""
    import shutil

    from transformers import GPT2Config, GPT2LMHeadModel

    out = tmp_path_factory.mktemp("tiny_hf_gpt2")
    torch.manual_seed(0)
    config = GPT2Config(n_positions=128, n_embd=32, n_layer=2, n_head=2, initializer_range=0.2)
    GPT2LMHeadModel(config).save_pretrained(out)
    shutil.copyfile(gpt2_bpe_dir / "encoder.json", out / "vocab.json")
    shutil.copyfile(gpt2_bpe_dir / "vocab.bpe", out / "merges.txt")
    return out


def tiny_run_args(data: Path, out: str | Path, preset: str = "tiny") -> list[str]:
    """train.py's arguments for a tiny preset (`tiny`, or `modern-tiny`) on a `tiny_train_data`
    dataset, writing to out; each test adds its own settings after them."""
    return [f"--preset={preset}", f"--data={data}", f"--tokeniser={data / 'tokeniser.tkn'}",
            f"--out={out}"]  # fmt: skip


@pytest.fixture(scope="session")
def tiny_train_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small prepared dataset for training tests, from the embedded python-docs corpus (always
    there, offline): a 512-token tokeniser trained on its first 40 documents, which are then
    tokenised into 20k-token shards (about 8k val and 90k train tokens). The tokeniser is
    DIR/tokeniser.tkn (the copy the manifest names)."""
    from gpt.data.prepare import prepare_dataset
    from gpt.data.sources import iter_documents
    from gpt.data.tokeniser import GPTTokeniser

    root = tmp_path_factory.mktemp("tiny_train_data")
    docs = list(iter_documents("python-docs", max_docs=40))
    tok = GPTTokeniser.train(docs, 512)
    tok.save(root / "trained.tkn")
    data = root / "data"
    prepare_dataset(
        docs, data, tok.spec, shard_size=20_000, val_tokens=8_000, workers=1, progress=False
    )
    return data


@pytest.fixture
def tiny_run_config(tiny_train_data: Path, tmp_path: Path):  # -> Callable[..., TrainConfig]
    """A factory of `tiny` training recipes on `tiny_train_data`, writing to tmp_path/run, no
    export or plots; keyword arguments override fields."""
    from gpt.config import TrainConfig, train_preset

    def make(**overrides: object) -> TrainConfig:
        fields = {
            "data": str(tiny_train_data),
            "tokeniser": str(tiny_train_data / "tokeniser.tkn"),
            "out": str(tmp_path / "run"),
            "export": False,
            "plot": False,
            **overrides,
        }
        return train_preset("tiny", **fields)

    return make
