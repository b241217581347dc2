"""Model cards (gpt/hf_card.py): every export writes README.md with the hub's front matter and the
run's facts, transformers still loads the directory, and --push-to-hub fails offline in one line."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gpt.checkpoint import save_model_dir
from gpt.config import GPTConfig
from gpt.finish import finish_run
from gpt.hf_card import NOT_REPRODUCED, hub_dataset
from gpt.model.gpt2 import GPT
from gpt.train.loop import train
from tests.test_trainer import write_hellaswag
from train import build_parser, resolve_config

yaml = pytest.importorskip("yaml")
transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parent.parent


def card_parts(path: Path) -> tuple[dict, str]:
    """(front matter as YAML, body) of a model card."""
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def export_cmd(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpt.hf", "export", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        timeout=120,
    )


def test_run_export_card_has_the_runs_facts(tiny_run_config, tmp_path: Path) -> None:
    hella = write_hellaswag(tmp_path / "hellaswag.jsonl", 4)
    cfg = tiny_run_config(max_steps=6, samples=0, hellaswag=str(hella), export=True)
    result = finish_run(train(cfg), cfg, say=lambda _: None)
    run = Path(cfg.out)
    kept = {name: None for name in NOT_REPRODUCED}  # settings that do not change the model
    hella_scores = [
        e["value"]
        for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if e["kind"] == "hella"
    ]

    # the command, as a user runs it: relative paths from the run's parent folder
    out = export_cmd("run/checkpoints/best", "cmd_export", cwd=run.parent)
    assert out.returncode == 0, out.stderr
    for export_dir in (result.export_dir, run / "../cmd_export"):  # both read the run's log
        assert export_dir is not None
        meta, body = card_parts(export_dir / "README.md")
        assert meta["library_name"] == "transformers"
        assert meta["license"] and meta["pipeline_tag"] == "text-generation"
        assert {"gpt2", "text-generation", "gpt-alpha"} <= set(meta["tags"])
        assert "datasets" not in meta  # a local corpus, not a hub dataset
        params = json.loads((run / "config.json").read_text())["parameters"]
        assert f"Parameters: {params:,}" in body
        assert f"Trained: {result.tokens:,} tokens in {result.steps:,} steps" in body
        assert f"Validation loss: {result.best_val_loss:.4f}" in body
        assert f"HellaSwag (acc_norm): {hella_scores[-1]:.4f}" in body
        commands = body.split("```bash\n", 1)[1].split("\n```", 1)[0].splitlines()
        [command] = [c for c in commands if " train.py " in c]  # after fineweb.py's, if known
        argv = shlex.split(command)
        assert argv[:2] == ["python", "train.py"]
        _, again, _ = resolve_config(build_parser().parse_args(argv[2:]))
        assert {**again.to_dict(), **kept} == {**cfg.to_dict(), **kept}
        model = transformers.AutoModelForCausalLM.from_pretrained(export_dir)
        assert model.num_parameters() > 0


def test_bare_model_export_card_and_transformers_load(tmp_path: Path, gpt2_bpe_dir: Path) -> None:
    torch.manual_seed(0)
    config = GPTConfig(block_size=32, vocab_size=50257, n_layer=1, n_head=2, n_embd=16,
                       pad_vocab_multiple=64)  # fmt: skip
    model = GPT(config)  # 50,304 rows, 47 of them padding
    save_model_dir(model, tmp_path / "ckpt", tokeniser_spec="gpt2")
    out = export_cmd("ckpt", "out", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    meta, body = card_parts(tmp_path / "out" / "README.md")
    assert meta["library_name"] == "transformers" and "datasets" not in meta
    exported = model.num_params() - 47 * config.n_embd  # the tied table's padded rows dropped
    assert f"Parameters: {exported:,}" in body
    assert f"({exported:,} parameters)" in out.stdout  # the command says the same
    assert "## Reproduce" not in body and "Trained:" not in body
    usage = body.split("```python\n", 1)[1].split("\n```", 1)[0].splitlines()
    assert len(usage) == 3 and "AutoModelForCausalLM.from_pretrained" in usage[1]
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert hf.num_parameters() == exported
    idx = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        ours, _ = model(idx)
        torch.testing.assert_close(hf(idx).logits, ours, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "env",
    [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}],
    ids=["offline-mode", "closed-port"],
)
def test_push_to_hub_offline_fails_in_one_line(
    tmp_path: Path, env: dict[str, str], gpt2_bpe_dir: Path
) -> None:
    model = GPT(GPTConfig(block_size=8, vocab_size=50257, n_layer=1, n_head=1, n_embd=8))
    save_model_dir(model, tmp_path / "ckpt", tokeniser_spec="gpt2")
    start = time.monotonic()
    out = export_cmd(
        "ckpt", "out", "--push-to-hub", "someone/tiny", cwd=tmp_path, HF_TOKEN="hf_dummy", **env
    )
    assert time.monotonic() - start < 60
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert "someone/tiny" in lines[0] and "Traceback" not in out.stderr
    assert (tmp_path / "out" / "README.md").is_file()  # the export itself was written


def test_hub_dataset_ids() -> None:
    assert hub_dataset("HuggingFaceFW/fineweb-edu (sample-10BT)") == "HuggingFaceFW/fineweb-edu"
    assert hub_dataset("python-docs") is None
    assert hub_dataset("/data/corpus.txt") is None
    assert hub_dataset(None) is None
