"""The package's layers: each module imports only from its own layer or the layers before it,
there is no import cycle, and the data-preparation modules do not import torch.

Every import counts, those inside functions and under `if TYPE_CHECKING` included: an import
moved into a function to dodge a cycle is still a dependency. The layers follow the data flow
(README's Layout section):

    1 capability, config, cli, fsio, lock, distributed     2 data, model     3 checkpoint     4 hf
    5 hellaswag, gguf     6 train     7 plot, demo, finish     then the entry points (any layer)
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gpt"

# module-name prefix -> layer; a module belongs to the first prefix that matches it
LAYERS: dict[str, int] = {
    "gpt.capability": 1,
    "gpt.config": 1,
    "gpt.cli": 1,
    "gpt.fsio": 1,
    "gpt.lock": 1,
    "gpt.distributed": 1,
    "gpt.data": 2,
    "gpt.model": 2,
    "gpt.checkpoint": 3,
    "gpt.runlog": 3,
    "gpt.hf": 4,
    "gpt.hellaswag": 5,
    "gpt.gguf": 5,
    "gpt.train": 6,
    "gpt.plot": 7,
    "gpt.demo": 7,
    "gpt.finish": 7,
}
# Data preparation runs in many worker processes: these must not pay for torch's import.
TORCH_FREE = (
    "gpt.data.sources",
    "gpt.data.tokeniser",
    "gpt.data.bpe",
    "gpt.data.shards",
    "gpt.data.prepare",
)


def module_name(path: Path) -> str:
    """gpt/data/loader.py -> gpt.data.loader; gpt/model/__init__.py -> gpt.model."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int | None:
    """The layer of a gpt module (`gpt` itself, whose names are lazy, is layer 0)."""
    if module == "gpt":
        return 0
    for prefix, layer in LAYERS.items():
        if module == prefix or module.startswith(prefix + ".") or module.startswith(prefix + "_"):
            return layer
    return None


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The gpt modules `path` imports anywhere in its body; `from gpt.x import y` counts as
    gpt.x.y when that is a module, else as gpt.x."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "gpt")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "gpt":
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    known = set(modules)
    return {name: imported_modules(path, known) - {name} for name, path in modules.items()}


def test_every_module_has_a_layer() -> None:
    unplaced = [m for m in package_modules() if layer_of(m) is None]
    assert not unplaced, f"add these modules to LAYERS (and README's Layout): {unplaced}"


def test_modules_import_only_from_earlier_layers() -> None:
    violations = [
        f"{module} (layer {layer_of(module)}) imports {dep} (layer {layer_of(dep)})"
        for module, deps in import_graph().items()
        for dep in deps
        if module != "gpt" and (layer_of(dep) or 0) > (layer_of(module) or 0)
    ]
    assert not violations, "\n".join(violations)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, str] = {}  # "active" on the current path, "done" when fully explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "active"
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "active":
                return path[path.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_a_hand_made_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle or [])


@pytest.mark.parametrize("module", TORCH_FREE)
def test_data_preparation_does_not_import_torch(module: str) -> None:
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "False"
