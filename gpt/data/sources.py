"""Where documents come from: fineweb-edu (or any hub dataset), local files, the embedded corpus.

Every source is an iterator of document strings, read lazily so that nothing is held in memory:

    >>> from gpt.data.sources import iter_documents
    >>> docs = list(iter_documents("python-docs", max_docs=2))  # doctest: +SKIP

Sources:
- "fineweb-edu" (default): HuggingFaceFW/fineweb-edu, config `name` (sample-10BT, sample-100BT,
  sample-350BT), streamed with `datasets` (streaming=True); `dataset` names another hub dataset.
- a local file or folder: .txt (one document per file), .jsonl/.json (one JSON object per line,
  field `text_field`), .parquet (one document per row, read in row-group batches); folders are
  walked recursively in sorted order.
- "python-docs": the documentation shipped inside this Python interpreter (the pydoc_data topics,
  then the standard library's docstrings, one document per module), read with `ast` (nothing is
  imported), deterministic and deduplicated: about 2 MB of English technical prose.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import json
import sysconfig
import tokenize
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt.cli import UserError

FINEWEB_EDU = "HuggingFaceFW/fineweb-edu"
FINEWEB_EDU_NAMES = ("sample-10BT", "sample-100BT", "sample-350BT")
DEFAULT_NAME = "sample-10BT"
PYTHON_DOCS = "python-docs"
SOURCES = ("fineweb-edu", PYTHON_DOCS)
LOCAL_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")

# Parts of the standard library that are not documentation prose (tests, GUIs, vendored code).
STDLIB_SKIP = frozenset(
    {
        "test",
        "tests",
        "idle_test",
        "idlelib",
        "tkinter",
        "turtledemo",
        "lib2to3",
        "ensurepip",
        "site-packages",
        "dist-packages",
        "__pycache__",
        "pydoc_data",
    }
)
MIN_DOCSTRING_CHARS = 40  # shorter docstrings ("Return self.") carry no prose


class SourceError(UserError):
    """A source that cannot be read: the message names it and says what to do."""


def iter_documents(
    source: str = "fineweb-edu",
    *,
    name: str | None = DEFAULT_NAME,
    dataset: str | None = None,
    text_field: str = "text",
    max_docs: int | None = None,
) -> Iterator[str]:
    """Documents of `source` in a deterministic order, at most `max_docs` of them.

    `name` is the hub config (fineweb-edu's sample); with `dataset` (another hub dataset, only
    with source "fineweb-edu") it is that dataset's config, None for a dataset without configs.
    """
    if dataset is not None and source != "fineweb-edu":
        raise SourceError(f"--dataset {dataset} names a hub dataset; it needs --source fineweb-edu")
    if source == "fineweb-edu":
        docs = iter_hub_dataset(dataset or FINEWEB_EDU, name=name, text_field=text_field)
    elif source == PYTHON_DOCS:
        docs = iter_python_docs()
    else:
        docs = iter_local(Path(source), text_field=text_field)
    return itertools.islice(docs, max_docs)


def iter_hub_dataset(
    path: str,
    *,
    name: str | None = None,
    data_files: str | list[str] | None = None,
    text_field: str = "text",
) -> Iterator[str]:
    """Stream the "train" split of a `datasets` dataset (a hub id, or a builder such as "parquet"
    with `data_files`), yielding each row's `text_field`. Nothing is downloaded up front, and
    the hub is first contacted when the first document is asked for."""
    try:
        import datasets  # heavy and optional; only this source needs it
    except ImportError:
        raise SourceError(
            f"streaming {path} needs the datasets package: pip install datasets"
        ) from None
    what = path if name is None else f"{path} ({name})"
    try:
        rows = datasets.load_dataset(
            path, name=name, data_files=data_files, split="train", streaming=True
        )
    except (OSError, ValueError) as e:
        raise SourceError(_hub_error(what, e)) from None
    yield from _texts(rows, text_field, what)


def _hub_error(what: str, e: BaseException) -> str:
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return (
        f"could not read dataset {what} from the Hugging Face hub: {reason}; "
        "offline, pass a local folder of .parquet or .jsonl files as --source"
    )


def _texts(rows: Iterable[dict[str, Any]], text_field: str, what: str) -> Iterator[str]:
    """The `text_field` of each row; a row without it, or a connection lost while streaming, is
    an error naming the source."""
    try:
        for i, row in enumerate(rows):
            text = row.get(text_field)
            if not isinstance(text, str):
                fields = ", ".join(sorted(row)) or "none"
                raise SourceError(f"{what}: row {i} has no text field {text_field!r} ({fields})")
            yield text
    except OSError as e:
        raise SourceError(_hub_error(what, e)) from None


def iter_local(path: Path, *, text_field: str = "text") -> Iterator[str]:
    """Documents of a local file, or of every supported file under a folder in sorted order.
    A missing path or a folder without document files is refused at once."""
    if not path.exists():
        known = ", ".join(SOURCES)
        raise SourceError(f"source {path} is neither {known} nor an existing file or folder")
    files = local_files(path)
    if not files:
        suffixes = " ".join(LOCAL_SUFFIXES)
        raise SourceError(f"source {path} holds no document files ({suffixes})")
    return itertools.chain.from_iterable(iter_file(f, text_field=text_field) for f in files)


def local_files(path: Path) -> list[Path]:
    """`path` itself if it is a file, else the supported files below it (recursive, sorted by
    relative path, hidden files and folders skipped)."""
    if path.is_file():
        return [path]
    return sorted(
        (
            p
            for p in path.rglob("*")
            if p.is_file()
            and p.suffix.lower() in LOCAL_SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        ),
        key=lambda p: p.relative_to(path).as_posix(),
    )


def iter_file(file: Path, *, text_field: str = "text") -> Iterator[str]:
    """Documents of one file, by its suffix."""
    suffix = file.suffix.lower()
    try:
        if suffix == ".txt":
            yield file.read_text(encoding="utf-8", errors="replace")
        elif suffix in (".jsonl", ".json"):
            yield from _iter_jsonl(file, text_field)
        elif suffix == ".parquet":
            yield from _iter_parquet(file, text_field)
        else:
            suffixes = " ".join(LOCAL_SUFFIXES)
            raise SourceError(f"{file}: unsupported file type (use one of {suffixes})")
    except OSError as e:  # unreadable (permissions), vanished, or a damaged parquet page
        raise SourceError(f"{file}: cannot read ({e})") from None


def _iter_jsonl(file: Path, text_field: str) -> Iterator[str]:
    with file.open(encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SourceError(f"{file}:{lineno}: not a JSON object per line ({e})") from None
            text = row.get(text_field) if isinstance(row, dict) else None
            if not isinstance(text, str):
                raise SourceError(f"{file}:{lineno}: no text field {text_field!r}")
            yield text


def _iter_parquet(file: Path, text_field: str) -> Iterator[str]:
    try:
        import pyarrow as pa  # heavy and optional; only this file type needs it
        import pyarrow.parquet as pq
    except ImportError:
        raise SourceError(f"{file}: reading parquet needs pyarrow: pip install pyarrow") from None

    try:
        pf = pq.ParquetFile(file)
    except Exception as e:  # pyarrow raises its own ArrowInvalid etc.
        raise SourceError(f"{file}: not a readable parquet file ({e})") from None
    if text_field not in pf.schema_arrow.names:
        fields = ", ".join(pf.schema_arrow.names)
        raise SourceError(f"{file}: no text column {text_field!r} (columns: {fields})")
    kind = pf.schema_arrow.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise SourceError(f"{file}: column {text_field!r} holds {kind}, not text")
    try:
        for batch in pf.iter_batches(batch_size=1024, columns=[text_field]):
            yield from (text for text in batch.column(0).to_pylist() if text is not None)
    except (pa.ArrowException, UnicodeDecodeError) as e:  # a damaged data page
        raise SourceError(f"{file}: damaged parquet file ({e})") from None


def iter_python_docs() -> Iterator[str]:
    """The embedded corpus: pydoc topics (sorted by name), then one document per standard library
    module (sorted by path) made of its module, class and function docstrings. Exact duplicate
    docstrings are dropped; the result depends only on the Python version."""
    from pydoc_data.topics import topics  # a 700 kB dict: only this source needs it

    seen: set[bytes] = set()
    for key in sorted(topics):
        text = topics[key].strip()
        if _first_time(text, seen):
            yield text
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for file in _stdlib_files(stdlib):
        doc = _module_document(file, stdlib, seen)
        if doc:
            yield doc


def _first_time(text: str, seen: set[bytes]) -> bool:
    digest = hashlib.sha1(text.encode("utf-8")).digest()
    if digest in seen:
        return False
    seen.add(digest)
    return True


def _stdlib_files(stdlib: Path) -> list[Path]:
    def wanted(p: Path) -> bool:
        parts = p.relative_to(stdlib).parts
        return not STDLIB_SKIP & set(parts) and not any(s.startswith("config-") for s in parts)

    return sorted(
        (p for p in stdlib.rglob("*.py") if wanted(p)),
        key=lambda p: p.relative_to(stdlib).as_posix(),
    )


def _module_document(file: Path, stdlib: Path, seen: set[bytes]) -> str:
    """The docstrings of one module, each under its qualified name, or "" when it has none."""
    try:
        with tokenize.open(file) as f:
            tree = ast.parse(f.read())
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return ""
    module = ".".join(file.relative_to(stdlib).with_suffix("").parts).removesuffix(".__init__")
    parts = []
    for qualname, doc in _docstrings(tree, module):
        if len(doc) >= MIN_DOCSTRING_CHARS and _first_time(doc, seen):
            parts.append(f"{qualname}\n\n{doc}")
    return "\n\n".join(parts)


def _docstrings(node: ast.AST, qualname: str) -> Iterator[tuple[str, str]]:
    """(qualified name, cleaned docstring) of `node` and its classes and functions, in source
    order; private names (leading underscore, dunders excepted) are skipped."""
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(node, clean=True)
        if doc:
            yield qualname, doc.strip()
    for child in getattr(node, "body", []):
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            private = child.name.startswith("_") and not child.name.endswith("__")
            if not private:
                yield from _docstrings(child, f"{qualname}.{child.name}")


@dataclass
class DocumentOptions:
    """Where a command reads its documents (fineweb.py, tokeniser.py)."""

    source: str = "fineweb-edu"
    """fineweb-edu (the hub), python-docs (the corpus inside Python, offline), or a local file or
    folder of .txt/.jsonl/.json/.parquet."""
    name: str | None = None
    """Hub config: for fineweb-edu one of sample-10BT, sample-100BT, sample-350BT; None:
    sample-10BT for fineweb-edu, no config for --dataset."""
    dataset: str | None = None
    """Another hub dataset with a text column, instead of HuggingFaceFW/fineweb-edu."""
    text_field: str = "text"
    """The text field of .jsonl/.parquet rows and hub datasets."""

    def hub_name(self) -> str:
        """The hub config that `documents` reads: --name, or the fineweb-edu default."""
        if self.name is not None:
            return self.name
        return DEFAULT_NAME if self.dataset is None else ""

    def documents(self, max_docs: int | None = None) -> Iterator[str]:
        """The documents these options name, at most `max_docs` of them."""
        name = self.hub_name() or None
        if self.source == "fineweb-edu" and self.dataset is None and name not in FINEWEB_EDU_NAMES:
            raise SourceError(f"--name {name}: fineweb-edu has {', '.join(FINEWEB_EDU_NAMES)}")
        return iter_documents(
            self.source,
            name=name,
            dataset=self.dataset,
            text_field=self.text_field,
            max_docs=max_docs,
        )
