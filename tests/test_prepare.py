"""prepare_dataset and fineweb.py: every document stored whole and in order, resume after an
interruption gives the same bytes, custom and 32-bit tokenisers, refusals, the command line."""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tiktoken
import tiktoken.load
from tiktoken_ext.openai_public import r50k_pat_str

import fineweb as fineweb_cli  # the command at the project root
from gpt.cli import count, run
from gpt.data.prepare import CHUNK_DOCS, prepare_dataset
from gpt.data.shards import (
    MANIFEST,
    TOKENISER_FILE,
    DataError,
    load_doc_offsets,
    load_shard,
    manifest_tokeniser_spec,
    read_manifest,
)
from gpt.data.tokeniser import GPTTokeniser, get_tokeniser

ROOT = Path(__file__).resolve().parent.parent
WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "while",
    "42",
    "dogs",
    "ran",
    "3.14",
    "km;",
    "naïve",
    "café",
    "東京",
    "😀",
    "don't",
    "<|endoftext|>",
]


def make_documents(n: int, seed: int = 0) -> list[str]:
    """`n` documents of 0 to ~600 words (a few much longer), with unicode and special-token text."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        length = rng.choice([0, 1, 5, 30, 120, 400]) if i % 17 else 1500
        words = [rng.choice(WORDS) for _ in range(length)]
        docs.append(" ".join(words) + rng.choice(["", "\n", "\n\n", " "]))
    return docs


DOCS = make_documents(120)


@pytest.fixture(scope="module")
def reference(gpt2_bpe_dir: Path) -> tiktoken.Encoding:
    """tiktoken's GPT-2 encoding built straight from the original files."""
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(gpt2_bpe_dir / "vocab.bpe"),
        encoder_json_file=str(gpt2_bpe_dir / "encoder.json"),
    )
    return tiktoken.Encoding(
        "gpt2-ref",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 50256},
    )


def expected_docs(enc: tiktoken.Encoding | GPTTokeniser, docs: list[str]) -> list[list[int]]:
    return [[enc.eot_token, *enc.encode_ordinary(d)] for d in docs]


def read_back(out: Path) -> tuple[dict, list[np.ndarray]]:
    """The manifest and the documents of all shards in order, checked against each header."""
    manifest = read_manifest(out)
    docs = []
    for shard in manifest["shards"]:
        tokens = load_shard(out / shard["file"])
        offsets = load_doc_offsets(out / shard["file"])
        assert (len(tokens), len(offsets) - 1) == (shard["tokens"], shard["docs"])
        docs += [np.asarray(tokens[a:b]) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    return manifest, docs


def files_of(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.mark.parametrize("workers", [1, 2])
def test_every_document_whole_and_in_order(
    tmp_path: Path, reference: tiktoken.Encoding, workers: int
) -> None:
    shard_size, val_tokens = 2000, 5000
    manifest = prepare_dataset(
        DOCS,
        tmp_path,
        "gpt2",
        shard_size=shard_size,
        val_tokens=val_tokens,
        workers=workers,
        source="test",
        progress=False,
    )
    want = expected_docs(reference, DOCS)
    manifest_read, got = read_back(tmp_path)
    assert manifest_read == manifest
    assert [d.tolist() for d in got] == want  # every document, whole, in source order
    assert manifest["docs"] == len(DOCS) and manifest["tokens"] == sum(map(len, want))
    assert (manifest["eot"], manifest["vocab_size"], manifest["dtype"]) == (50256, 50257, "uint16")
    assert manifest["fingerprint"] == get_tokeniser("gpt2").fingerprint
    assert manifest["complete"] and manifest["tokeniser"] == "gpt2"

    # Shards are packed greedily: each is closed only by a document that does not fit; a shard
    # over the size holds one long document. The val split comes first, within its budget.
    shards = manifest["shards"]
    splits = [s["split"] for s in shards]
    n_val = splits.count("val")
    assert n_val >= 2 and splits == ["val"] * n_val + ["train"] * (len(shards) - n_val)
    val_total = sum(s["tokens"] for s in shards[:n_val])
    assert val_total <= val_tokens
    first_doc = np.cumsum([0] + [s["docs"] for s in shards])
    for i, shard in enumerate(shards):
        assert shard["tokens"] <= shard_size or shard["docs"] == 1
        if i + 1 < len(shards):
            capacity = min(shard_size, val_tokens - sum(s["tokens"] for s in shards[:i]))
            capacity = capacity if i < n_val else shard_size
            assert shard["tokens"] + len(want[first_doc[i + 1]]) > capacity


def test_workers_do_not_change_the_bytes(tmp_path: Path, gpt2_bpe_dir: Path) -> None:
    kwargs = {"shard_size": 3000, "source": "test", "progress": False}
    prepare_dataset(DOCS, tmp_path / "one", "gpt2", workers=1, **kwargs)
    prepare_dataset(DOCS, tmp_path / "two", "gpt2", workers=2, **kwargs)
    assert files_of(tmp_path / "one") == files_of(tmp_path / "two")


def test_val_split_defaults_to_one_shard_and_can_be_off(tmp_path: Path, gpt2_bpe_dir: Path) -> None:
    default = prepare_dataset(DOCS, tmp_path / "a", "gpt2", shard_size=3000, progress=False)
    assert [s["split"] for s in default["shards"][:2]] == ["val", "train"]
    none = prepare_dataset(
        DOCS, tmp_path / "b", "gpt2", shard_size=3000, val_tokens=0, progress=False
    )
    assert {s["split"] for s in none["shards"]} == {"train"}
    assert [s["tokens"] for s in none["shards"]] == [s["tokens"] for s in default["shards"]]


def test_max_docs_and_max_tokens(tmp_path: Path, reference: tiktoken.Encoding) -> None:
    want = expected_docs(reference, DOCS)
    m = prepare_dataset(DOCS, tmp_path / "d", "gpt2", shard_size=2000, max_docs=10, progress=False)
    assert m["docs"] == 10 and [d.tolist() for d in read_back(tmp_path / "d")[1]] == want[:10]
    budget = 3333
    m = prepare_dataset(
        DOCS, tmp_path / "t", "gpt2", shard_size=1000, max_tokens=budget, workers=2, progress=False
    )
    n = int(np.searchsorted(np.cumsum([len(d) for d in want]), budget)) + 1
    assert m["docs"] == n and m["tokens"] >= budget > m["tokens"] - len(want[n - 1])
    assert [d.tolist() for d in read_back(tmp_path / "t")[1]] == want[:n]


def test_reads_a_bounded_number_of_documents_ahead(tmp_path: Path, gpt2_bpe_dir: Path) -> None:
    """Memory stays bounded: only a few chunks are in flight, however long the source."""
    pulled = 0

    def long_source() -> Iterator[str]:
        nonlocal pulled
        for i in range(200_000):
            pulled += 1
            yield f"document {i} " * 10

    m = prepare_dataset(
        long_source(),
        tmp_path,
        "gpt2",
        shard_size=5000,
        max_tokens=40_000,
        workers=2,
        progress=False,
    )
    assert m["tokens"] >= 40_000
    assert pulled <= m["docs"] + 2 * 2 * CHUNK_DOCS + 1


def test_resume_after_the_token_budget_was_reached(tmp_path: Path, gpt2_bpe_dir: Path) -> None:
    """Killed between the last shard and the final manifest: the rerun only finishes."""
    kwargs = {"shard_size": 1000, "max_tokens": 3000, "progress": False}
    full = prepare_dataset(DOCS, tmp_path / "full", "gpt2", **kwargs)
    out = tmp_path / "out"
    prepare_dataset(DOCS, out, "gpt2", **kwargs)
    manifest = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps({**manifest, "complete": False}, indent=2) + "\n")
    assert prepare_dataset(DOCS, out, "gpt2", **kwargs) == full
    assert files_of(out) == files_of(tmp_path / "full")


def crashing(docs: list[str], after: int) -> Iterator[str]:
    """The documents, then an error after `after` of them (a crash mid-way)."""
    for i, doc in enumerate(docs):
        if i == after:
            raise RuntimeError("simulated crash")
        yield doc


@pytest.mark.parametrize("crash_after", [0, 1, 37, 90, 119])
def test_interrupted_run_resumes_to_identical_bytes(
    tmp_path: Path, gpt2_bpe_dir: Path, crash_after: int
) -> None:
    kwargs = {"shard_size": 1500, "val_tokens": 4000, "source": "test", "progress": False}
    prepare_dataset(DOCS, tmp_path / "full", "gpt2", **kwargs)
    out = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare_dataset(crashing(DOCS, crash_after), out, "gpt2", workers=2, **kwargs)
    done = {}
    if crash_after == 0:
        assert not out.exists()  # a source failing at once leaves nothing behind
    else:
        assert not read_manifest(out, allow_incomplete=True)["complete"]
        with pytest.raises(DataError, match="did not finish"):
            read_manifest(out)
        shards = read_manifest(out, allow_incomplete=True)["shards"]
        done = {s["file"]: (out / s["file"]).stat().st_ino for s in shards}
        (out / ".train_000099.bin.abc.tmp").write_bytes(b"left by a killed writer")

    prepare_dataset(DOCS, out, "gpt2", **kwargs)
    assert files_of(out) == files_of(tmp_path / "full")
    # Finished shards were kept, not rewritten.
    assert {name: (out / name).stat().st_ino for name in done} == done


def test_killed_command_resumes_to_identical_bytes(tmp_path: Path, gpt2_bpe_dir: Path) -> None:
    """SIGKILL `fineweb.py` once it has written a few shards, run it again: same files."""
    source = tmp_path / "docs.jsonl"
    docs = make_documents(800, seed=1)
    source.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    out = tmp_path / "killed"
    cmd = [sys.executable, "fineweb.py", "--source", str(source), "--out", str(out)]
    cmd += ["--shard-size", "4000", "--workers", "1", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if len(json.loads((out / MANIFEST).read_text())["shards"]) >= 3:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = read_manifest(out, allow_incomplete=True)
    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    prepare_dataset(
        docs,
        tmp_path / "full",
        "gpt2",
        shard_size=4000,
        workers=2,
        source=str(source.resolve()),
        progress=False,
    )
    assert files_of(out) == files_of(tmp_path / "full")
    assert len(killed["shards"]) < len(read_manifest(out)["shards"])


def test_rerun_with_other_tokeniser_source_or_settings_is_refused(
    tmp_path: Path, gpt2_bpe_dir: Path
) -> None:
    prepare_dataset(DOCS[:20], tmp_path, "gpt2", shard_size=1000, source="a", progress=False)
    inode = (tmp_path / MANIFEST).stat().st_ino
    again = prepare_dataset(iter(()), tmp_path, "gpt2", shard_size=1000, source="a", progress=False)
    assert again == read_manifest(tmp_path) and (tmp_path / MANIFEST).stat().st_ino == inode
    tkn = tmp_path.parent / "small.tkn"
    GPTTokeniser.train(DOCS, 300).save(tkn)
    with pytest.raises(DataError, match="prepared with tokeniser gpt2, not small"):
        prepare_dataset(DOCS, tmp_path, str(tkn), shard_size=1000, source="a", progress=False)
    with pytest.raises(DataError, match="prepared with source a, not b"):
        prepare_dataset(DOCS, tmp_path, "gpt2", shard_size=1000, source="b", progress=False)
    with pytest.raises(DataError, match="prepared with settings"):
        prepare_dataset(DOCS, tmp_path, "gpt2", shard_size=999, source="a", progress=False)
    other = tmp_path.parent / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not an empty folder"):
        prepare_dataset(DOCS, other, "gpt2", progress=False)


def test_custom_tokeniser_is_copied_and_rebuilt_in_workers(tmp_path: Path) -> None:
    tkn = tmp_path / "mine.tkn"
    GPTTokeniser.train(DOCS, 400).save(tkn)
    tok = GPTTokeniser(tkn)
    out = tmp_path / "data"
    manifest = prepare_dataset(DOCS, out, str(tkn), shard_size=2500, workers=2, progress=False)
    assert manifest["tokeniser"] == TOKENISER_FILE and manifest["tokeniser_name"] == "mine"
    assert (out / TOKENISER_FILE).read_bytes() == tkn.read_bytes()
    spec = manifest_tokeniser_spec(out)
    assert spec == str((out / TOKENISER_FILE).resolve())
    assert get_tokeniser(spec).fingerprint == manifest["fingerprint"] == tok.fingerprint
    assert [d.tolist() for d in read_back(out)[1]] == expected_docs(tok, DOCS)


def test_vocabulary_over_65536_is_stored_as_uint32(tmp_path: Path) -> None:
    merges = [(a, b) for a in range(256) for b in range(256)]  # every byte pair: 65,793 ids
    tkn = tmp_path / "wide.tkn"
    tok = GPTTokeniser.from_merges(merges)
    tok.save(tkn)
    assert tok.n_vocab > 2**16
    out = tmp_path / "data"
    manifest = prepare_dataset(DOCS[:30], out, str(tkn), shard_size=5000, progress=False)
    assert manifest["dtype"] == "uint32"
    tokens = load_shard(out / manifest["shards"][0]["file"])
    assert tokens.dtype == np.uint32 and tokens.max() == tok.eot_token > 2**16
    assert [d.tolist() for d in read_back(out)[1]] == expected_docs(tok, DOCS[:30])


def fineweb(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "fineweb.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_fineweb_command(tmp_path: Path, reference: tiktoken.Encoding) -> None:
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, doc in enumerate(DOCS[:12]):
        (folder / f"{i:02d}.txt").write_text(doc, encoding="utf-8")
    out = tmp_path / "data"
    result = fineweb("--source", str(folder), "--out", str(out), "--shard-size", "1K")
    assert result.returncode == 0, result.stderr
    assert "12 documents" in result.stdout
    assert [d.tolist() for d in read_back(out)[1]] == expected_docs(reference, DOCS[:12])
    assert read_manifest(out)["source"] == str(folder.resolve())


def test_counts_on_the_command_line() -> None:
    assert [count(t) for t in ("5000", "100M", "2.5K", "1e8", "1B")] == [
        5000,
        100_000_000,
        2500,
        100_000_000,
        1_000_000_000,
    ]
    for bad in ("1.5", "-3", "x", "1e400", "10Q"):
        with pytest.raises(argparse.ArgumentTypeError):
            count(bad)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "--workers must be >= 1"),
        (["--shard-size", "12X"], "not a count"),
        (["--shard-size", "0", "--source", "python-docs"], "shard_size must be >= 1"),
        (["--source", "/no/such/folder"], "neither fineweb-edu, python-docs nor an existing"),
        (["--name", "sample-1BT"], "fineweb-edu has sample-10BT"),
        (["--tokeniser", "nope.tkn", "--source", "python-docs"], "nope.tkn"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_fineweb_bad_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        run(fineweb_cli.main, [*args, "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_fineweb_offline_hub_is_one_line_in_a_subprocess(tmp_path: Path) -> None:
    result = fineweb("--max-docs", "3", "--out", str(tmp_path / "out"), env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: could not read")
    assert "HuggingFaceFW/fineweb-edu (sample-10BT)" in result.stderr
    assert not (tmp_path / "out").exists()
