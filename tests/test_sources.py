"""Document sources: local files and folders, the fineweb-edu (hub) path on local parquet files in
fineweb-edu's schema, the offline error, and the embedded python-docs corpus."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpt.cli import parse_options
from gpt.data import sources
from gpt.data.sources import (
    FINEWEB_EDU,
    DocumentOptions,
    SourceError,
    iter_documents,
    iter_hub_dataset,
    iter_python_docs,
)

ROOT = Path(__file__).resolve().parent.parent


def write_fineweb_parquet(path: Path, texts: list[str], row_group_size: int = 3) -> None:
    """A parquet file with fineweb-edu's columns (as on the hub) holding `texts`."""
    n = len(texts)
    table = pa.table(
        {
            "text": pa.array(texts, pa.string()),
            "id": pa.array([f"<urn:uuid:{i:08d}>" for i in range(n)], pa.string()),
            "dump": pa.array(["CC-MAIN-2024-10"] * n, pa.string()),
            "url": pa.array([f"https://example.org/{i}" for i in range(n)], pa.string()),
            "file_path": pa.array(["s3://commoncrawl/x.warc.gz"] * n, pa.string()),
            "language": pa.array(["en"] * n, pa.string()),
            "language_score": pa.array([0.95] * n, pa.float64()),
            "token_count": pa.array([len(t.split()) for t in texts], pa.int64()),
            "score": pa.array([3.2] * n, pa.float64()),
            "int_score": pa.array([3] * n, pa.int64()),
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)


TEXTS = [
    f"Document {i}: the mitochondria is the powerhouse of the cell. " * (i % 4 + 1)
    for i in range(20)
]


@pytest.fixture
def fineweb_files(tmp_path: Path) -> list[Path]:
    files = [tmp_path / "fw" / f"{i:03d}_00000.parquet" for i in range(2)]
    files[0].parent.mkdir()
    write_fineweb_parquet(files[0], TEXTS[:12])
    write_fineweb_parquet(files[1], TEXTS[12:])
    return files


def test_fineweb_edu_streams_through_datasets(fineweb_files: list[Path], monkeypatch) -> None:
    """The fineweb-edu source asks `datasets` for the hub dataset, streamed; served here by the
    same streaming loader over local parquet files in fineweb-edu's schema."""
    import datasets

    real = datasets.load_dataset
    calls = []

    def fake_hub(path, name=None, data_files=None, split=None, streaming=False):
        calls.append((path, name, data_files, split, streaming))
        files = [str(f) for f in fineweb_files]
        return real("parquet", data_files=files, split=split, streaming=streaming)

    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    docs = iter_documents("fineweb-edu", name="sample-100BT")
    assert calls == []  # nothing is fetched before the first document is asked for
    assert list(docs) == TEXTS
    assert calls == [(FINEWEB_EDU, "sample-100BT", None, "train", True)]
    assert list(iter_documents("fineweb-edu", max_docs=5)) == TEXTS[:5]
    assert calls[-1][1] == "sample-10BT"


def test_hub_dataset_path_on_local_parquet(fineweb_files: list[Path]) -> None:
    files = [str(f) for f in fineweb_files]
    assert list(iter_hub_dataset("parquet", data_files=files)) == TEXTS
    with pytest.raises(SourceError, match="no text field 'body'"):
        next(iter_hub_dataset("parquet", data_files=files, text_field="body"))


def test_unreachable_hub_is_one_clear_error(monkeypatch) -> None:
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'HuggingFaceFW/fineweb-edu' on the Hub (offline)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(SourceError) as err:
        next(iter_documents("fineweb-edu"))
    message = str(err.value)
    assert "HuggingFaceFW/fineweb-edu (sample-10BT)" in message
    assert "--source" in message and "\n" not in message


def test_local_parquet_reads_rows_in_order(fineweb_files: list[Path]) -> None:
    folder = fineweb_files[0].parent
    assert list(iter_documents(str(folder))) == TEXTS
    assert list(iter_documents(str(fineweb_files[1]))) == TEXTS[12:]
    assert list(iter_documents(str(folder), max_docs=4)) == TEXTS[:4]
    with pytest.raises(SourceError, match="no text column 'content'"):
        list(iter_documents(str(folder), text_field="content"))


def test_folder_walk_is_recursive_sorted_and_typed(tmp_path: Path) -> None:
    (tmp_path / "b" / "c").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "b" / "c" / "z.txt").write_text("deep text")
    (tmp_path / "a.txt").write_text("first file\nwith two lines")
    (tmp_path / "b" / "m.jsonl").write_text(
        json.dumps({"text": "json one", "n": 1}) + "\n\n" + json.dumps({"text": "json two"}) + "\n"
    )
    (tmp_path / "b" / "notes.md").write_text("skipped")
    (tmp_path / ".hidden" / "x.txt").write_text("skipped")
    (tmp_path / "c.json").write_text(json.dumps({"body": "other", "text": "json three"}))
    assert list(iter_documents(str(tmp_path))) == [
        "first file\nwith two lines",  # a.txt
        "deep text",  # b/c/z.txt
        "json one",  # b/m.jsonl
        "json two",
        "json three",  # c.json
    ]
    assert list(iter_documents(str(tmp_path / "c.json"), text_field="body")) == ["other"]


def test_bad_local_input(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="neither fineweb-edu, python-docs nor an existing"):
        iter_documents(str(tmp_path / "missing"))
    with pytest.raises(SourceError, match="holds no document files"):
        iter_documents(str(tmp_path))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"title": "no text"}\n')
    with pytest.raises(SourceError, match=r"bad.jsonl:2: no text field 'text'"):
        list(iter_documents(str(bad)))
    bad.write_text("not json\n")
    with pytest.raises(SourceError, match=r"bad.jsonl:1: not a JSON object"):
        list(iter_documents(str(bad)))


def _opts(*argv: str) -> DocumentOptions:
    return parse_options(DocumentOptions, list(argv), "x", "")


def test_document_options(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "a.txt").write_text("alpha")
    assert list(_opts("--source", str(tmp_path)).documents()) == ["alpha"]
    with pytest.raises(SourceError, match="--name sample-1BT"):
        _opts("--name", "sample-1BT").documents()
    with pytest.raises(SourceError, match="needs --source fineweb-edu"):
        _opts("--source", "python-docs", "--dataset", "org/data").documents()

    seen = []
    monkeypatch.setattr(
        sources, "iter_hub_dataset", lambda path, name, text_field: seen.append((path, name)) or []
    )
    list(_opts("--dataset", "org/data", "--text-field", "content").documents())
    list(_opts("--dataset", "org/data", "--name", "en").documents())
    list(_opts().documents())
    assert seen == [("org/data", None), ("org/data", "en"), (FINEWEB_EDU, "sample-10BT")]


@pytest.fixture(scope="module")
def python_docs() -> list[str]:
    return list(iter_python_docs())


def test_python_docs_corpus(python_docs: list[str]) -> None:
    from pydoc_data.topics import topics

    n_topics = len(set(topics.values()))
    assert python_docs[:3] == [topics[k].strip() for k in sorted(topics)[:3]]
    assert len(set(python_docs)) == len(python_docs)  # deduplicated
    size = sum(len(d.encode("utf-8")) for d in python_docs)
    assert 1_000_000 < size < 20_000_000, size  # "a few MB" of text
    assert len(python_docs) > n_topics + 200
    body = "\n".join(python_docs[n_topics:])
    assert "json.dumps\n\nSerialize ``obj`` to a JSON formatted ``str``." in body
    skipped = {"test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip"}
    assert not {d.split("\n", 1)[0].split(".")[0] for d in python_docs} & skipped


def test_python_docs_is_deterministic_and_imports_nothing(python_docs: list[str]) -> None:
    """A fresh interpreter yields the same documents, without importing the modules it reads."""
    n = 120
    code = (
        "import hashlib, sys; from gpt.data.sources import iter_documents; "
        f"d = list(iter_documents('python-docs', max_docs={n})); "
        "print(hashlib.sha256('\\0'.join(d).encode()).hexdigest()); "
        "print(sorted({'this', 'antigravity', 'tkinter', 'smtplib', 'turtle'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[0] == hashlib.sha256("\0".join(python_docs[:n]).encode()).hexdigest()
    assert out[1] == "[]"
