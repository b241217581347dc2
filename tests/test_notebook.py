"""eval/train_eval.ipynb runs top to bottom on a run directory, in the venv's own kernel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "eval" / "train_eval.ipynb"


def _toy_run(run_dir: Path) -> None:
    run_dir.mkdir()
    lines = []
    for step in range(300):
        tokens = (step + 1) * 4096
        loss = 3.0 + 6.0 * 0.99**step
        extras = {"lr": 6e-4 * min(1.0, (step + 1) / 50), "grad_norm": 1.0, "tok_s": 5e4}
        lines.append({"step": step, "tokens": tokens, "kind": "train", "value": loss, **extras})
        if step % 50 == 49:
            lines.append({"step": step, "tokens": tokens, "kind": "val", "value": loss + 0.1})
            lines.append(
                {"step": step, "tokens": tokens, "kind": "hella", "value": 0.25 + step / 1e4}
            )
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_notebook_is_stored_without_outputs() -> None:
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)
    assert "parameters" in code[0]["metadata"]["tags"]


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    _toy_run(tmp_path / "run")
    reference = tmp_path / "reference.txt"
    reference.write_text(
        "".join(f"{s} ({(s + 1) * 8192}) train {9 - s / 50}\n" for s in range(200))
    )
    monkeypatch.setenv("RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("REFERENCE_LOGS", str(reference))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=180, resources={"metadata": {"path": str(ROOT / "eval")}}
    )
    client.execute()  # raises CellExecutionError if a cell fails
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "run: 1.23M tokens, best val loss" in text
    assert "reference: 1.64M tokens" in text
    assert "lr: last 0.0006" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # loss, HellaSwag, schedule and speed
    markdown = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert "| min val loss |" in markdown[0] and "GPT-3 125M 0.337" in markdown[0]
