"""Honest errors: bad user input is one line `error: ...` naming the file (and line), exit code 2;
a bug keeps its traceback and exits 1.

Each case runs the real command as a user would: a subprocess in a temporary working directory,
with relative paths.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt import checkpoint as ckpt
from gpt.checkpoint import save_model_dir
from gpt.config import model_preset
from gpt.data.shards import read_shard_header
from gpt.data.sources import SourceError, iter_file
from gpt.hellaswag import data as hd
from gpt.model.gpt2 import GPT
from gpt.train import state as train_state

ROOT = Path(__file__).resolve().parent.parent
TRAIN_FLAGS = ("--no-plot", "--no-export", "--samples", "0", "--hellaswag", "off")


def run_command(cwd: Path, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python ROOT/script args...` from `cwd`, one thread (the machine is shared)."""
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def user_error(result: subprocess.CompletedProcess[str], *names: str) -> str:
    """The one `error: ` line of a command refused for bad input; it must name each of `names`."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert len(errors) == 1, result.stderr
    for name in names:
        assert name in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def workdir(tiny_train_data: Path, tmp_path: Path) -> Path:
    """A working directory holding a copy of the tiny dataset as `data/` (the tests damage it)."""
    shutil.copytree(tiny_train_data, tmp_path / "data")
    return tmp_path


@pytest.fixture
def model_dir(workdir: Path) -> Path:
    """A `tiny` model with the dataset's tokeniser, saved as `model/` in the working directory."""
    tokeniser = str(workdir / "data/tokeniser.tkn")
    save_model_dir(GPT(model_preset("tiny")), workdir / "model", tokeniser_spec=tokeniser)
    return workdir / "model"


def train_shards(workdir: Path) -> list[Path]:
    return sorted((workdir / "data").glob("train_*.bin"))


def test_truncated_shard_is_refused_when_training_opens_it(workdir: Path) -> None:
    shard = train_shards(workdir)[1]
    with shard.open("r+b") as f:
        f.truncate(shard.stat().st_size - 100)
    result = run_command(
        workdir, "train.py", "--preset", "tiny", "--data", "data",
        "--tokeniser", "data/tokeniser.tkn", "--out", "runs/x", "--max-steps", "2", *TRAIN_FLAGS,
    )  # fmt: skip
    line = user_error(result, f"data/{shard.name}")
    assert "truncated shard" in line


def test_damaged_tokens_are_refused_when_training_reads_them(workdir: Path) -> None:
    # Same size, valid header and document starts: only reading the tokens shows the damage. Every
    # train shard gets an id beyond the 512-token vocabulary, so the first one read fails.
    for shard in train_shards(workdir):
        assert read_shard_header(shard).dtype.itemsize == 2
        with shard.open("r+b") as f:
            f.seek(-2, os.SEEK_END)
            f.write(b"\xff\xff")  # the last token becomes 65535
    result = run_command(
        workdir, "train.py", "--preset", "tiny", "--data", "data",
        "--tokeniser", "data/tokeniser.tkn", "--out", "runs/x", "--max-steps", "2", *TRAIN_FLAGS,
    )  # fmt: skip
    line = user_error(result)
    assert re.search(r"data/train_\d{6}\.bin: damaged shard \(token id 65535", line), line


def test_damaged_weights_are_refused_on_resume(workdir: Path) -> None:
    first = run_command(
        workdir, "train.py", "--preset", "tiny", "--data", "data",
        "--tokeniser", "data/tokeniser.tkn", "--out", "runs/x", "--max-steps", "2",
        "--save-every", "1", "--eval-every", "1", *TRAIN_FLAGS,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    weights = workdir / "runs/x/checkpoints/step_0000002/model.safetensors"
    with weights.open("r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    result = run_command(workdir, "train.py", "--out", "runs/x", "--resume")
    line = user_error(result, "checkpoints/step_0000002/model.safetensors")
    assert "damaged weights file" in line


def test_malformed_hellaswag_line_is_named(workdir: Path, model_dir: Path) -> None:
    good = {"ctx": "A man sits down.", "endings": [" a", " b", " c", " d"], "label": 1}
    (workdir / "bad.jsonl").write_text(json.dumps(good) + '\n{"ctx": "x", "endings": [\n')
    result = run_command(workdir, "hellaswag.py", "-m", "model", "--data", "bad.jsonl")
    line = user_error(result, "bad.jsonl:2:")
    assert "not JSON" in line


def test_corrupt_tokeniser_file_is_named_with_its_line(workdir: Path, model_dir: Path) -> None:
    lines = (workdir / "data/tokeniser.tkn").read_text(encoding="utf-8").split("\n")
    assert re.fullmatch(r"\d+ \d+ \d+ .*", lines[9])  # line 10 is a merge: "new left right text"
    lines[9] = "x" + lines[9]
    (workdir / "bad.tkn").write_text("\n".join(lines), encoding="utf-8")
    result = run_command(
        workdir, "inference.py", "--model", "model", "--tokeniser", "bad.tkn", "--max-tokens", "2"
    )
    line = user_error(result, "bad.tkn: line 10:")
    assert "expected a number" in line


def test_missing_source_file_for_fineweb_is_named(workdir: Path) -> None:
    result = run_command(
        workdir, "fineweb.py", "--source", "texts/missing.jsonl",
        "--tokeniser", "data/tokeniser.tkn", "--out", "cache/mine", "--quiet",
    )  # fmt: skip
    user_error(result, "texts/missing.jsonl")
    assert not (workdir / "cache").exists()  # refused before anything was written


def test_missing_model_for_inference_is_named(tmp_path: Path) -> None:
    result = run_command(tmp_path, "inference.py", "--model", "runs/nope/checkpoints/best")
    line = user_error(result, "runs/nope/checkpoints/best")
    assert "no such model directory" in line


def test_bad_sampling_flag_is_a_user_error(workdir: Path, model_dir: Path) -> None:
    result = run_command(workdir, "inference.py", "--model", "model", "--top-p", "2")
    user_error(result, "top_p must be in (0, 1], got 2.0")


# fineweb.py with a bug planted in the test's own process (production code has no hook): the shard
# writer is handed one document length too few, so gpt.data.shards.write_shard's consistency
# check raises a plain ValueError, as it would for a real bug in gpt/data/prepare.py.
BUGGY_FINEWEB = """
import runpy
import sys

import gpt.data.prepare
from gpt.data.shards import write_shard


def drop_last_document(path, pieces, lengths):
    write_shard(path, pieces, lengths[:-1])


gpt.data.prepare.write_shard = drop_last_document
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_internal_error_keeps_its_traceback(workdir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", BUGGY_FINEWEB, str(ROOT / "fineweb.py"), "--source", "python-docs",
         "--max-docs", "3", "--workers", "1", "--tokeniser", "data/tokeniser.tkn",
         "--out", "cache/docs", "--quiet"],
        cwd=workdir, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" in result.stderr
    assert "ValueError: document lengths sum to" in result.stderr
    assert not [line for line in result.stderr.splitlines() if line.startswith("error: ")]


# ----------------------------------------------------------------------------- read sites
# Library errors from reading a damaged file become the domain error naming the file (in process:
# the commands above show how such an error reaches the user).


def training_checkpoint(path: Path) -> Path:
    """A real training checkpoint of the tiny model (one AdamW step, a loader position)."""
    model = GPT(model_preset("tiny"))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))[1].backward()
    optimizer.step()
    loader = {"version": 1, "split": "train", "seed": 1, "tokens_in_split": 900}
    state = train_state.TrainingState(
        step=1,
        tokens=4,
        best_val_loss=None,
        world_size=1,
        train_config={},
        optimizer=optimizer.state_dict(),
        loader=[{**loader, "epoch": 0, "position": 4}],
        rng=[train_state.capture_rng_state()],
    )
    weights = ckpt.model_state_for_saving(model)
    return train_state.save_checkpoint(path, weights, model.config, state, None, None)


def test_damaged_training_state_files_are_named(tmp_path: Path) -> None:
    path = training_checkpoint(tmp_path / "step_0000001")
    (path / "loader.json").write_text(
        json.dumps({"version": 1, "ranks": [{"version": 1, "epoch": 0, "position": 901,
                                              "tokens_in_split": 900}]})
    )  # fmt: skip
    with pytest.raises(ckpt.CheckpointError, match=r"loader.json: damaged loader positions"):
        train_state.load_training_state(path)
    path = training_checkpoint(tmp_path / "again")
    rng = torch.load(path / "rng.pt", weights_only=True)
    rng[0]["python"] = (3, (-1,) * 625, None)  # Mersenne Twister words are unsigned
    torch.save(rng, path / "rng.pt")
    before = random.getstate()
    with pytest.raises(ckpt.CheckpointError, match=r"rng.pt: damaged RNG state \(OverflowError"):
        train_state.load_training_state(path)
    assert random.getstate() == before  # trying the saved states left this process's own alone
    optimizer = path / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:-200])
    with pytest.raises(ckpt.CheckpointError, match=r"optimizer.pt: damaged training state"):
        train_state.load_training_state(path)


def test_bytes_that_are_not_utf8_are_named_with_their_line(tmp_path: Path) -> None:
    good = {"ctx": "A man sits down.", "endings": [" a", " b", " c", " d"], "label": 1}
    file = tmp_path / "val.jsonl"
    file.write_bytes(json.dumps(good).encode() + b'\n{"ctx": "caf\xe9"}\n')
    with pytest.raises(hd.HellaSwagError, match=r"val.jsonl:2: not UTF-8 text"):
        hd.load_examples(file)


def test_damaged_parquet_and_non_text_columns_are_named(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": [f"document {i} " * 50 for i in range(2000)]}), file)
    raw = bytearray(file.read_bytes())
    raw[len(raw) // 4 : len(raw) // 2] = bytes(len(raw) // 2 - len(raw) // 4)  # zero data pages
    file.write_bytes(bytes(raw))
    with pytest.raises(SourceError, match=r"docs.parquet: "):
        list(iter_file(file))
    numbers = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"text": [1, 2, 3]}), numbers)
    with pytest.raises(SourceError, match=r"numbers.parquet: column 'text' holds int64, not text"):
        list(iter_file(numbers))
