"""eval/eval_results.py on results files in lm_eval's schema, run_eval.sh's input checks, and an
offline end-to-end run: a tiny Hugging Face model through lm_eval on HellaSwag from a local file,
cross-checked against hellaswag.py."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import hellaswag as hellaswag_cli  # the command at the project root
from gpt.cli import run

ROOT = Path(__file__).resolve().parent.parent
RESULTS_PY = ROOT / "eval" / "eval_results.py"
RUN_EVAL = ROOT / "eval" / "run_eval.sh"

# Scores of model A (x100 after the table's scaling), one per benchmark, with the metric the table
# must read; decoys under other metric keys must be ignored.
A_SCORES = {
    "piqa": ("acc_norm,none", 0.6234),
    "social_iqa": ("acc,none", 0.3901),
    "openbookqa": ("acc_norm,none", 0.3120),
    "triviaqa": ("exact_match,remove_whitespace", 0.0105),
    "truthfulqa_mc1": ("acc,none", 0.2289),
    "truthfulqa_mc2": ("acc,none", 0.4012),
    "mmlu": ("acc,none", 0.2593),
    "winogrande": ("acc,none", 0.5170),
    "gsm8k": ("exact_match,flexible-extract", 0.0197),
    "arc_challenge": ("acc_norm,none", 0.2765),
    "hellaswag": ("acc_norm,none", 0.3140),
}


def _result_file(
    path: Path, results: dict, groups: dict | None = None, subtasks: dict | None = None
) -> None:
    """A results_<time>.json as lm_eval 0.4 writes it (the parts the table reads, and some more)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "results": results,
        "group_subtasks": subtasks or {t: [] for t in results},
        "configs": {},
        "versions": {t: 1.0 for t in results},
        "n-shot": {t: 0 for t in results},
        "config": {"model": "hf", "model_args": "pretrained=x", "batch_size": "8"},
        "date": 1764000000.0,
    }
    if groups is not None:
        data["groups"] = groups
    path.write_text(json.dumps(data))


def _task(task: str, metric: str, value: float) -> dict:
    decoy = "acc,none" if metric != "acc,none" else "acc_norm,none"
    return {
        "alias": task,
        metric: value,
        metric.replace(",", "_stderr,"): 0.01,
        decoy: 0.999,  # the other metric: must not be picked
    }


def _write_model_a(root: Path) -> None:
    d = root / "org__model-a"
    for task, (metric, value) in A_SCORES.items():
        if task == "mmlu":
            continue
        if task == "gsm8k":
            res = {
                "gsm8k": {
                    "alias": "gsm8k",
                    "exact_match,strict-match": 0.0001,
                    "exact_match,flexible-extract": value,
                }
            }
        else:
            res = {task: _task(task, metric, value)}
        _result_file(d / f"{task}_0shot" / "org__model-a" / "results_2026-01-01T00-00-00.json", res)
    # MMLU: the group score and subtasks whose plain average (0.5) differs from it
    mmlu = {
        "mmlu": {"alias": "mmlu", "acc,none": 0.2593, "acc_stderr,none": 0.003},
        "mmlu_humanities": {"alias": " - humanities", "acc,none": 0.9},
        "mmlu_abstract_algebra": {"alias": "  - abstract_algebra", "acc,none": 0.1},
    }
    _result_file(
        d / "mmlu_5shot" / "x" / "results_2026-01-01T00-00-00.json",
        mmlu,
        groups={"mmlu": mmlu["mmlu"], "mmlu_humanities": mmlu["mmlu_humanities"]},
        subtasks={"mmlu": ["mmlu_humanities"], "mmlu_humanities": ["mmlu_abstract_algebra"]},
    )
    # an older run of HellaSwag: the newer file wins
    _result_file(
        d / "hellaswag_10shot" / "org__model-a" / "results_2025-06-01T00-00-00.json",
        {"hellaswag": _task("hellaswag", "acc_norm,none", 0.9)},
    )


def _write_model_b(root: Path) -> None:
    """runs/b/export: PIQA and WinoGrande only, plus a local task."""
    d = root / "runs__b__export" / "all"
    _result_file(
        d / "results_2026-02-01T00-00-00.json",
        {
            "piqa": _task("piqa", "acc_norm,none", 0.55),
            "winogrande": _task("winogrande", "acc,none", 0.5),
            "hellaswag_local": _task("hellaswag_local", "acc_norm,none", 0.25),
        },
    )


def _results_module() -> ModuleType:
    """eval/eval_results.py imported as a module (eval/ is no package)."""
    spec = importlib.util.spec_from_file_location("eval_results", RESULTS_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["eval_results"] = module
    spec.loader.exec_module(module)
    return module


eval_results = _results_module()


def _run_results(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """eval_results.py's main in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as e:
        run(eval_results.main, list(args))
    out, err = capsys.readouterr()
    return int(e.value.code or 0), out, err


def _cells(table: str) -> dict[str, list[str]]:
    """Row label -> cells, from the markdown table."""
    rows = {}
    for line in table.splitlines():
        if line.startswith("| ") and not line.startswith("|--"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_table_metrics_mmlu_once_missing_excluded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_model_a(tmp_path)
    _write_model_b(tmp_path)
    code, out, err = _run_results(
        capsys, "--results-dir", str(tmp_path), "org/model-a", "./runs/b/export/"
    )
    assert code == 0, err
    rows = _cells(out)
    assert rows["Benchmark"] == ["org/model-a", "./runs/b/export/"]
    assert rows["PIQA (0-shot, acc_norm)"] == ["62.34", "55.00"]
    assert rows["MMLU (5-shot, acc)"] == ["25.93", "–"]  # the group score, not (90 + 10) / 2
    assert rows["GSM8K (5-shot, exact_match)"] == ["1.97", "–"]  # flexible-extract
    assert rows["TriviaQA (0-shot, exact_match)"] == ["1.05", "–"]
    assert rows["HellaSwag (10-shot, acc_norm)"] == ["31.40", "–"]  # the newer file
    assert rows["hellaswag_local (acc_norm)"] == ["–", "25.00"]
    assert not any("mmlu_" in label for label in rows)  # subtasks never get rows
    # averages over what each model has: A the 11 benchmarks, B three rows
    a_avg = 100 * np.mean([v for _, v in A_SCORES.values()])
    assert rows["Average"] == [f"{a_avg:.2f}", f"{(55.0 + 50.0 + 25.0) / 3:.2f}"]
    assert len(rows) == 1 + 11 + 1 + 1
    note = out.split("\n\n", 1)[1]
    assert "left out of that model's average" in note
    assert "- org/model-a: hellaswag_local" in note
    assert "- ./runs/b/export/: SIQA, OpenBookQA, TriviaQA" in note
    # without model arguments: every model folder, named by folder
    _, out, _ = _run_results(capsys, "--results-dir", str(tmp_path))
    assert _cells(out)["Benchmark"] == ["org__model-a", "runs__b__export"]


def test_model_dir_name_matches_run_eval() -> None:
    assert eval_results.model_dir_name("./runs/124M/export/") == "runs__124M__export"
    assert eval_results.model_dir_name("/abs/path") == "__abs__path"
    assert eval_results.model_dir_name("EleutherAI/pythia-160m") == "EleutherAI__pythia-160m"


@pytest.mark.parametrize("case", ["no_dir", "no_results", "damaged"])
def test_results_bad_input(tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]) -> None:
    if case == "damaged":
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / "results_2026.json").write_text("{not json")
    elif case == "no_results":
        (tmp_path / "m").mkdir()
    folder = tmp_path / ("missing" if case == "no_dir" else "")
    code, _, err = _run_results(capsys, "--results-dir", str(folder), "m")
    assert code == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_results_script_bad_input_subprocess(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, str(RESULTS_PY), "--results-dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.startswith("error: no results folder") and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "no model given"),
        (["--tasks", "piqa", "m"], "bad task spec"),
        (["--limit", "0", "m"], "--limit"),
        (["--frobnicate", "m"], "unknown option"),
    ],
)
def test_run_eval_bad_input(args: list[str], message: str) -> None:
    r = subprocess.run(["bash", str(RUN_EVAL), *args], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and message in r.stderr


def test_run_eval_help_lists_the_suite() -> None:
    r = subprocess.run(["bash", str(RUN_EVAL), "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for task in ("piqa", "social_iqa", "truthfulqa_mc2", "gsm8k", "arc_challenge", "10-shot"):
        assert task in r.stdout


@pytest.mark.slow
def test_offline_end_to_end(
    tiny_hf_gpt2_dir: Path, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """run_eval.sh -> lm_eval (hellaswag_local, 8 items) -> eval_results.py, offline; lm_eval's
    log-likelihoods agree with hellaswag.py's, its acc and acc_norm with our acc and
    acc_norm_bytes."""
    data = shared_data / "hellaswag" / "hellaswag_val.jsonl"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf_home"),
        "HELLASWAG_FILE": str(data),
        "PYTHON": sys.executable,
        "OUTPUT_DIR": str(tmp_path / "results"),
        "TASKS": "hellaswag_local:0",
        "LIMIT": "8",
        "DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",  # a tiny model
    }
    model = str(tiny_hf_gpt2_dir)
    r = subprocess.run(
        ["bash", str(RUN_EVAL), "--batch-size", "4", "--log-samples", model],
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    model_dir = tmp_path / "results" / model.replace("/", "__")
    [results_file] = model_dir.rglob("results_*.json")
    lm = json.loads(results_file.read_text())["results"]["hellaswag_local"]
    assert lm["sample_len"] == 8
    rows = _cells(r.stdout)
    assert rows["hellaswag_local (acc_norm)"] == [f"{100 * lm['acc_norm,none']:.2f}"]

    [samples_file] = model_dir.rglob("samples_hellaswag_local_*.jsonl")
    samples = sorted(
        (json.loads(line) for line in samples_file.read_text().splitlines()),
        key=lambda s: s["doc_id"],
    )
    lm_ll = np.array([[float(resp[0][0]) for resp in s["resps"]] for s in samples])
    out = tmp_path / "ours.json"
    with pytest.raises(SystemExit) as e:
        run(
            hellaswag_cli.main,
            ["-m", model, "--data", str(data), "--limit", "8", "--output", str(out)],
        )
    assert e.value.code == 0
    ours = json.loads(out.read_text())
    np.testing.assert_allclose(
        [p["loglik"] for p in ours["predictions"]], lm_ll, rtol=1e-6, atol=1e-4
    )
    assert ours["acc"] == pytest.approx(lm["acc,none"])
    assert ours["acc_norm_bytes"] == pytest.approx(lm["acc_norm,none"])
