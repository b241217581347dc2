"""Data for the hellaswag_local lm-eval task: the HellaSwag jsonl named by HELLASWAG_FILE."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def local_file() -> Path:
    """HELLASWAG_FILE, else the val split in hellaswag.py's download cache."""
    if os.environ.get("HELLASWAG_FILE"):
        return Path(os.environ["HELLASWAG_FILE"])
    cache = os.environ.get("HELLASWAG_DIR") or Path.home() / ".cache" / "gpt-alpha" / "hellaswag"
    return Path(cache) / "hellaswag_val.jsonl"


def load_local(**_: Any) -> dict[str, Any]:
    """{"validation": Dataset} with ctx, endings and an int label per item."""
    import datasets

    path = local_file()
    if not path.is_file():
        raise FileNotFoundError(
            f"hellaswag_local: no {path}; set HELLASWAG_FILE or run hellaswag.py once to fetch it"
        )
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    items = [{"ctx": r["ctx"], "endings": r["endings"], "label": int(r["label"])} for r in rows]
    return {"validation": datasets.Dataset.from_list(items)}
