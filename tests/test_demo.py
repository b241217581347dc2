"""The one-command demo, shortened: tokeniser, data, unigram baseline, training, plots, export."""

from __future__ import annotations

import importlib.util
import json
import math
from collections import Counter
from pathlib import Path

import pytest

from gpt import lock
from gpt.checkpoint import save_model_dir
from gpt.cli import UserError
from gpt.config import model_preset, train_preset
from gpt.data.shards import read_manifest
from gpt.data.tokeniser import GPTTokeniser
from gpt.demo import demo_documents, replace_previous_demo, run_demo, write_summary
from gpt.model.gpt2 import GPT
from gpt.train import rundir
from tests.test_errors import TRAIN_FLAGS, run_command, user_error


def short_demo(tmp_path: Path, out: str, preset: str = "demo", **overrides: object):
    """A demo recipe (`demo`, or `modern-demo` with its own model) with the tiny model and a
    512-token tokeniser on 40 source documents."""
    settings = {
        "data": str(tmp_path / "data"),
        "tokeniser": str(tmp_path / "tok.tkn"),
        "out": str(tmp_path / out),
        "model": "modern-tiny" if preset == "modern-demo" else "tiny",
        "batch_size": 4,
        "seq_len": 32,
        "total_batch_size": 128,
        "warmup_steps": 5,
        "max_steps": 20,
        "eval_every": 10,
        "val_tokens": 1024,
        "sample_tokens": 8,
        "progress": False,
        "hellaswag": "off",  # `auto` would download HellaSwag on a machine with network
    }
    cfg = train_preset(preset, **{**settings, **overrides})
    lines: list[str] = []
    return run_demo(cfg, vocab_size=512, max_docs=40, say=lines.append), lines


def reference_entropy(tok: GPTTokeniser, docs: list[str], n_val_docs: int) -> float:
    """Unigram entropy of the first n_val_docs documents, each [eot] + tokens, in plain Python."""
    counts: Counter[int] = Counter()
    for doc in docs[:n_val_docs]:
        counts.update([tok.eot_token, *tok.encode_ordinary(doc)])
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values())


@pytest.mark.slow
def test_short_demo_end_to_end(tmp_path: Path) -> None:
    result, lines = short_demo(tmp_path, "run")
    text = "\n".join(lines)
    assert "tokeniser: 512 tokens trained" in text and "data: " in text
    assert "baseline: unigram entropy of the val split" in text
    assert "final val loss" in text and "nats/token better" in text

    tok = GPTTokeniser(tmp_path / "tok.tkn")
    manifest = read_manifest(tmp_path / "data")
    n_val = sum(s["docs"] for s in manifest["shards"] if s["split"] == "val")
    expected = reference_entropy(tok, demo_documents(40), n_val)
    assert result.unigram_entropy == pytest.approx(expected, abs=1e-9)

    run = tmp_path / "run"
    vals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [e["value"] for e in vals if e["kind"] == "val"]
    assert len(vals) == 3 and vals[-1] == result.train.final_val_loss < vals[0]
    assert result.margin == pytest.approx(result.unigram_entropy - vals[-1])
    summary = json.loads((run / "demo.json").read_text())
    assert summary["final_val_loss"] == vals[-1]
    assert (run / "export" / "config.json").is_file()
    if importlib.util.find_spec("matplotlib") is not None:
        assert result.train.plots and all(p.is_file() for p in result.train.plots)

    # a second demo reuses the tokeniser and the data, and replaces the previous run
    _, lines = short_demo(tmp_path, "run", max_steps=2, eval_every=2)
    assert not any(x.startswith(("tokeniser:", "data:")) for x in lines)
    assert f"{run}: replacing the previous demo run" in lines


def test_short_modern_demo_trains_and_exports_qwen3(tmp_path: Path) -> None:
    """The modern recipe through the same demo steps: Muon + AdamW, a Qwen3 export."""
    result, lines = short_demo(tmp_path, "run", preset="modern-demo", max_steps=10, eval_every=5)
    assert "final val loss" in "\n".join(lines)
    assert result.margin is not None and result.train.final_val_loss is not None
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert (saved["optimizer"], saved["schedule"]) == ("muon", "wsd")
    exported = json.loads((tmp_path / "run" / "export" / "config.json").read_text())
    assert exported["model_type"] == "qwen3"


def files(folder: Path) -> dict[Path, bytes]:
    """Every file under `folder` and its bytes, but the lock file (a refused command may leave
    an empty one)."""
    found = folder.rglob("*")
    return {p: p.read_bytes() for p in found if p.is_file() and p.name != lock.LOCK_FILE}


def test_the_demo_leaves_a_folder_that_is_not_a_demo_run_alone(
    tiny_train_data: Path, tmp_path: Path
) -> None:
    """Issue 17, item 1: `train.py --preset demo --out DIR`, DIR holding a run's checkpoint and
    a user's notes, exits 2 with one line naming DIR, and deletes nothing (it printed "replacing
    the previous demo run" and deleted the folder)."""
    run = tmp_path / "runs/mine"
    save_model_dir(GPT(model_preset("tiny")), rundir.step_dir(run, 5))
    (run / "notes.txt").write_text("my notes")
    before = files(run)
    data = ["--data", str(tiny_train_data), "--tokeniser", str(tiny_train_data / "tokeniser.tkn")]
    result = run_command(
        tmp_path,
        "train.py",
        *("--preset", "demo", "--out", "runs/mine", *data, "--model", "tiny", "--max-steps", "2"),
        *TRAIN_FLAGS,
    )
    user_error(result, "runs/mine", "not a demo run")
    assert files(run) == before


def test_a_previous_demo_run_is_known_by_its_mark(tmp_path: Path) -> None:
    """Only a folder whose demo.json carries the demo's mark is emptied (its held lock file
    stays); an empty folder is free; demo.json without the mark is not enough."""
    run = tmp_path / "run"
    (run / "checkpoints" / "step_0000001").mkdir(parents=True)
    (run / "log.txt").write_text("0 (128) train 6.0\n")
    write_summary(run, {"unigram_entropy": 5.0})
    lines: list[str] = []
    with lock.hold(run):
        replace_previous_demo(run, lines.append)
        assert [p.name for p in run.iterdir()] == [lock.LOCK_FILE]
    assert lines == [f"{run}: replacing the previous demo run"]
    replace_previous_demo(run, lines.append)  # nothing but the lock file: nothing to replace
    assert len(lines) == 1
    unmarked = tmp_path / "unmarked"
    unmarked.mkdir()
    (unmarked / "demo.json").write_text(json.dumps({"unigram_entropy": 5.0}))
    with pytest.raises(UserError, match="not a demo run"):
        replace_previous_demo(unmarked, lines.append)
    assert (unmarked / "demo.json").is_file()
