"""gpt/plot.py: both log formats (the real reference logs included), resumed runs, smoothing,
the PNG files, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from gpt import plot
from gpt.cli import UserError, run
from gpt.runlog import parse_log_line

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_metrics(run_dir: Path, events: list[dict]) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return run_dir


def _toy_events(steps: int = 40, tokens_per_step: int = 1000) -> list[dict]:
    events = []
    for s in range(steps):
        t = (s + 1) * tokens_per_step
        events.append({"step": s, "tokens": t, "kind": "train", "value": 8.0 - s * 0.1, "lr": 1e-3})
        if s % 10 == 9:
            events.append({"step": s, "tokens": t, "kind": "val", "value": 8.1 - s * 0.1})
            events.append({"step": s, "tokens": t, "kind": "hella", "value": 0.25 + s * 0.001})
            events.append({"step": s, "tokens": t, "kind": "sample", "value": "Once upon"})
    return events


def test_parse_log_line() -> None:
    assert parse_log_line("100 (52953088) val 6.6388\n") == (100, 52953088, "val", "6.6388")
    for bad in ("100 52953088 val 6.6", "x (1) val 2", "1 (2) val"):
        with pytest.raises(ValueError):
            parse_log_line(bad)


@pytest.mark.parametrize(
    "name, counts",
    [
        ("train_log_10B.txt", {"train": 19073, "val": 191, "hella": 191}),
        ("train_log_40B.txt", {"train": 80226, "val": 535, "hella": 535, "ckpt": 239}),
    ],
)
def test_real_reference_logs(shared_data: Path, name: str, counts: dict[str, int]) -> None:
    """The original GPT-alpha logs: `hellaswag` and `hella` are one kind; counts match grep."""
    run_ = plot.load_run(shared_data / "reference" / "gpt-alpha" / name)
    assert {k: len(v[0]) for k, v in run_.series.items()} == counts
    tokens, values = run_.get("val")
    assert (tokens[0], values[0]) == (524288, pytest.approx(10.9738 if "10B" in name else 10.9598))
    assert np.all(np.diff(run_.get("train")[0]) > 0)
    s = plot.summary(run_)
    # the 10B run ends below GPT-2's val loss and above its HellaSwag
    if "10B" in name:
        assert s["min_val_loss"] < plot.GPT2_124M_VAL_LOSS
        assert s["max_hellaswag"] > plot.GPT2_124M_HELLASWAG
        assert 9.9e9 < s["tokens"] < 1.01e10


def test_metrics_jsonl_resume_and_kinds(tmp_path: Path) -> None:
    events = [
        {"step": 0, "tokens": 10, "kind": "train", "value": 5.0},
        {"step": 1, "tokens": 20, "kind": "train", "value": 4.0},
        {"step": 2, "tokens": 30, "kind": "train", "value": 3.0},
        {"step": 1, "tokens": 20, "kind": "val", "value": 4.5},
        {"step": 2, "tokens": 30, "kind": "hellaswag", "value": 0.26},
        {"step": 2, "tokens": 30, "kind": "sample", "value": "text"},
        {"step": 2, "tokens": 30, "kind": "ckpt", "value": "checkpoints/step_0000002"},
        # resumed from step 1: steps 1 and 2 are logged again and replace the old ones
        {"step": 1, "tokens": 20, "kind": "train", "value": 4.1},
        {"step": 2, "tokens": 30, "kind": "train", "value": 3.1},
        {"step": 3, "tokens": 40, "kind": "train", "value": 2.9},
    ]
    run_ = plot.load_run(_write_metrics(tmp_path / "r", events))
    assert run_.name == "r"
    tokens, values = run_.get("train")
    assert tokens.tolist() == [10, 20, 30, 40]
    assert values.tolist() == [5.0, 4.1, 3.1, 2.9]
    assert run_.get("hella")[1].tolist() == [0.26]
    assert "sample" not in run_.series and "ckpt" not in run_.series  # no numeric value
    s = plot.summary(run_)
    assert (s["min_val_loss"], s["min_val_loss_tokens"], s["tokens"]) == (4.5, 20, 40)


def test_run_dir_prefers_metrics_jsonl_then_log_txt(tmp_path: Path) -> None:
    d = tmp_path / "run"
    d.mkdir()
    (d / "log.txt").write_text("0 (100) train 9.0\n 1 (200) train 8.0\n1 (200) val 8.5\n")
    assert plot.load_run(d).get("train")[1].tolist() == [9.0, 8.0]
    _write_metrics(d, [{"step": 0, "tokens": 100, "kind": "train", "value": 7.0}])
    assert plot.load_run(d).get("train")[1].tolist() == [7.0]


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no metrics.jsonl or log.txt"):
        plot.load_run(tmp_path)
    with pytest.raises(UserError, match="no such run directory"):
        plot.load_run(tmp_path / "missing")
    bad = tmp_path / "log.txt"
    bad.write_text("0 (100) train 9.0\nthis is not a log line\n")
    with pytest.raises(UserError, match=r"log.txt:2: "):
        plot.load_run(bad)
    (tmp_path / "m.jsonl").write_text('{"step": 1, "kind": "train"}\n')
    with pytest.raises(UserError, match=r"m.jsonl:1: "):
        plot.load_run(tmp_path / "m.jsonl")
    (tmp_path / "e.txt").write_text("0 (1) lr 0.001\n")
    with pytest.raises(UserError, match="no train, val or HellaSwag"):
        plot.load_run(tmp_path / "e.txt")


def test_moving_average_against_loop() -> None:
    x = np.random.default_rng(0).normal(size=50)
    for w in (1, 2, 5, 8):
        ref = [x[max(0, i - w // 2) : i + (w - 1) // 2 + 1].mean() for i in range(len(x))]
        np.testing.assert_allclose(plot.moving_average(x, w), ref)


def test_plot_runs_writes_pngs(shared_data: Path, tmp_path: Path) -> None:
    a = _write_metrics(tmp_path / "a", _toy_events())
    b = _write_metrics(tmp_path / "b", _toy_events(60, 800))
    ref = shared_data / "reference" / "gpt-alpha" / "train_log_10B.txt"
    paths = plot.plot_runs([a, b], tmp_path / "out", reference=[ref])
    assert paths == [tmp_path / "out" / "loss.png", tmp_path / "out" / "hellaswag.png"]
    for p in paths:
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 20_000
    assert sorted(x.name for x in (tmp_path / "out").iterdir()) == ["hellaswag.png", "loss.png"]
    # no HellaSwag anywhere: the loss figure only
    c = _write_metrics(tmp_path / "c", [e for e in _toy_events() if e["kind"] != "hella"])
    assert plot.plot_runs([c], tmp_path / "out_c") == [tmp_path / "out_c" / "loss.png"]


def _config(
    run_dir: Path, spec: str, source: str = "HuggingFaceFW/fineweb-edu (sample-10BT)"
) -> Path:
    """RUN/config.json as training writes it (the parts gpt/plot.py reads)."""
    config = {"train": {"tokeniser": spec}, "tokeniser": {"spec": spec}, "data": {"source": source}}
    (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir


def _labels(fig: Figure) -> list[str]:
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def _hlines(fig: Figure) -> dict[str, float]:
    """Label -> height of the figure's horizontal lines."""
    return {
        line.get_label(): float(line.get_ydata()[0])
        for line in fig.axes[0].get_lines()
        if len(set(line.get_ydata())) == 1 and list(line.get_xdata()) == [0, 1]
    }


def test_figure_contents(tmp_path: Path) -> None:
    """Titles, axis labels, legend entries and the GPT-2 baselines of a GPT-2-tokenised run."""
    runs = [plot.load_run(_config(_write_metrics(tmp_path / "a", _toy_events()), "gpt2"))]
    assert runs[0].tokeniser == "gpt2" and runs[0].unigram_entropy is None
    fig = plot.loss_figure(runs)
    ax = fig.axes[0]
    assert "Loss" in ax.get_title() and ax.get_xlabel() == "tokens trained"
    assert _labels(fig) == ["a: train (smoothed)", "a: val", "OpenAI GPT-2 124M val (3.2924)"]
    assert _hlines(fig) == {"OpenAI GPT-2 124M val (3.2924)": 3.2924}
    lo, hi = ax.get_ylim()
    assert lo < 3.2924 < hi  # the line shows though the toy run's loss stays above 4
    assert ax.xaxis.get_major_formatter()(40_000, 0) == "40K"
    fig = plot.hellaswag_figure(runs)
    assert _hlines(fig) == {
        "OpenAI GPT-3 125M (0.337)": 0.337,
        "OpenAI GPT-2 124M (0.2955)": 0.2955,
        "chance (0.25)": 0.25,
    }


@pytest.mark.parametrize(
    "spec, source",
    [
        ("cache/mine/tokeniser.tkn", "HuggingFaceFW/fineweb-edu (sample-10BT)"),  # own tokeniser
        (None, None),  # no config.json: nothing is known
        ("gpt2", "python-docs"),  # GPT-2's tokeniser on other data: HellaSwag compares, loss not
    ],
)
def test_no_gpt2_lines_where_they_do_not_compare(
    tmp_path: Path, spec: str | None, source: str | None
) -> None:
    run_dir = _write_metrics(tmp_path / "b", _toy_events())
    if spec is not None and source is not None:
        _config(run_dir, spec, source)
    runs = [plot.load_run(run_dir)]
    assert _hlines(plot.loss_figure(runs)) == {}
    assert _labels(plot.loss_figure(runs)) == ["b: train (smoothed)", "b: val"]
    hellaswag = _hlines(plot.hellaswag_figure(runs))
    assert ("OpenAI GPT-2 124M (0.2955)" in hellaswag) == (spec == "gpt2")
    assert hellaswag["chance (0.25)"] == 0.25


def test_demo_run_gets_its_unigram_line(shared_data: Path, tmp_path: Path) -> None:
    """A demo run (own tokeniser, RUN/demo.json) draws its unigram entropy, in its colour, and
    no GPT-2 line, until a GPT-2-tokenised reference joins it."""
    run_dir = _config(_write_metrics(tmp_path / "demo", _toy_events()), "cache/demo/t.tkn")
    (run_dir / "demo.json").write_text(json.dumps({"unigram_entropy": 6.7512, "seconds": 1.0}))
    runs = [plot.load_run(run_dir)]
    fig = plot.loss_figure(runs)
    label = "demo: unigram entropy of the val split (6.75)"
    assert _hlines(fig) == {label: 6.7512}
    line = next(x for x in fig.axes[0].get_lines() if x.get_label() == label)
    assert line.get_color() == plot.RUN_COLOURS[0]
    assert label in _labels(fig)
    ref = plot.load_run(shared_data / "reference" / "gpt-alpha" / "train_log_10B.txt")
    assert ref.tokeniser is None  # a bare log: unknown, unless given as a reference
    refs = [plot.load_run(ref.source, tokeniser="gpt2")]
    assert set(_hlines(plot.loss_figure(runs, refs))) == {label, "OpenAI GPT-2 124M val (3.2924)"}


def test_bad_run_files(tmp_path: Path) -> None:
    run_dir = _write_metrics(tmp_path / "r", _toy_events())
    (run_dir / "demo.json").write_text("{not json")
    with pytest.raises(UserError, match=r"demo.json: damaged JSON"):
        plot.load_run(run_dir)
    (run_dir / "demo.json").write_text("[6.75]")
    with pytest.raises(UserError, match=r"demo.json: not a JSON object"):
        plot.load_run(run_dir)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = _write_metrics(tmp_path / "run", _toy_events())
    r = subprocess.run(
        [sys.executable, "-m", "gpt.plot", str(run_dir)], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert (run_dir / "plots" / "loss.png").is_file()
    assert "run: 40K tokens, best val loss 4.2000 at 40K" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "gpt.plot", str(tmp_path / "missing"), "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.startswith("error: no such run directory") and "Traceback" not in r.stderr
    for args in ([str(run_dir), str(run_dir)], []):  # several runs need --out; nothing to plot
        with pytest.raises(SystemExit) as e:
            run(plot.main, args)
        assert e.value.code == 2
        assert capsys.readouterr().err.startswith("error: ")
