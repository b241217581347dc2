"""Untrusted files stay in their box: a checkpoint's config.json names no file outside its
directory and builds no model before its weights are checked, an error quotes a file's content
only as a short escaped prefix, a name that reads as a local path never goes to the hub, and a
HellaSwag download is cached only when whole.

The commands run as a user runs them: subprocesses in a temporary working directory, with
relative paths (tests/test_errors.py's helpers).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file
from test_errors import run_command, user_error

from gpt import checkpoint as ckpt
from gpt import hf
from gpt.cli import excerpt
from gpt.config import GPTConfig, model_preset
from gpt.data.bpe import TokeniserError
from gpt.data.tokeniser import GPTTokeniser, get_tokeniser
from gpt.hellaswag import data as hd
from gpt.hf_hub import ModelNotFoundError, UnsupportedModelError, looks_local
from gpt.model.gpt2 import GPT
from gpt.train.inputs import read_hellaswag

SECRET = "hf_" + "s3cr3t" * 6  # what a crafted path should never make us print
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}


def tiny_checkpoint(folder: Path, tokeniser: str | None = "gpt2") -> Path:
    """A `tiny` model directory whose config.json names `tokeniser` (written as given)."""
    torch.manual_seed(0)
    ckpt.save_model_dir(GPT(model_preset("tiny")), folder)
    edit_config(folder, tokeniser=tokeniser)
    return folder


def edit_config(folder: Path, **fields: object) -> None:
    """Change top-level fields of a checkpoint's config.json (`model` merges into the shape)."""
    meta = json.loads((folder / "config.json").read_text())
    meta["model"].update(fields.pop("model", {}))
    meta.update(fields)
    (folder / "config.json").write_text(json.dumps(meta))


def two_items(path: Path) -> Path:
    item = {"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": 0}
    path.write_text(json.dumps(item) + "\n" + json.dumps(item) + "\n")
    return path


# ------------------------------------------------------------------ a checkpoint's tokeniser


@pytest.mark.parametrize("script", ["inference.py", "hellaswag.py"])
def test_a_checkpoint_cannot_make_us_print_another_file(tmp_path: Path, script: str) -> None:
    (tmp_path / "secret.env").write_text(f"HF_TOKEN={SECRET}\n")
    tiny_checkpoint(tmp_path / "model", tokeniser=str(tmp_path / "secret.env"))
    two_items(tmp_path / "items.jsonl")
    args = ["--model", "model"] if script == "inference.py" else ["-m", "model"]
    args += ["--max-tokens", "2"] if script == "inference.py" else ["--data", "items.jsonl"]
    result = run_command(tmp_path, script, *args)
    line = user_error(result, "model/config.json", "tokeniser")
    assert SECRET[:8] not in result.stderr + result.stdout, line


def test_only_gpt2_or_the_bundled_file_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "secret.env").write_text(f"HF_TOKEN={SECRET}\n")
    model = tiny_checkpoint(tmp_path / "model", tokeniser="../secret.env")
    with pytest.raises(ckpt.CheckpointError, match="tokeniser must be 'gpt2' or 'tokeniser.tkn'"):
        ckpt.load_model_dir(model)
    # the bundled name, made a link to a file outside the directory
    edit_config(model, tokeniser=ckpt.TOKENISER_FILE)
    (model / ckpt.TOKENISER_FILE).symlink_to(tmp_path / "secret.env")
    with pytest.raises(ckpt.CheckpointError, match="outside the checkpoint directory"):
        ckpt.load_model_dir(model)
    edit_config(model, tokeniser=["gpt2"])
    with pytest.raises(ckpt.CheckpointError, match="tokeniser must be a string or null"):
        ckpt.load_model_dir(model)


def test_a_bundled_tokeniser_still_loads(tmp_path: Path) -> None:
    tok = GPTTokeniser.train(["hug pug pun bun hugs"] * 10, vocab_size=260)
    tok.save(tmp_path / "small.tkn")
    torch.manual_seed(0)
    model = GPT(model_preset("tiny"))
    ckpt.save_model_dir(model, tmp_path / "model", str(tmp_path / "small.tkn"), tok.fingerprint)
    (tmp_path / "small.tkn").unlink()  # the checkpoint's own copy is what loads
    lm = hf.load_model(str(tmp_path / "model"), torch.device("cpu"))
    assert lm.tokeniser is not None and lm.tokeniser.fingerprint == tok.fingerprint
    assert lm.tokeniser.spec == str((tmp_path / "model" / ckpt.TOKENISER_FILE).resolve())


def test_an_error_quotes_a_short_escaped_prefix_of_a_file(tmp_path: Path) -> None:
    """A user's own --tokeniser naming the wrong file: the error shows the beginning of its
    first line, escaped, never the whole line."""
    (tmp_path / "secret.env").write_text(f"\x1b[2JHF_TOKEN={SECRET}\n")
    with pytest.raises(TokeniserError) as e:
        get_tokeniser(str(tmp_path / "secret.env"))
    message = str(e.value)
    assert "secret.env" in message and "'\\x1b[2JHF_TOKEN=" in message  # escaped
    assert SECRET[:8] not in message and "\x1b" not in message


def test_excerpt_is_short_escaped_and_marked_when_cut() -> None:
    assert excerpt("x" * 100) == repr("x" * 20) + "..."
    assert excerpt("a\nb\x1b") == r"'a\nb\x1b'"
    assert excerpt(list(range(100))).endswith("...") and len(excerpt(list(range(100)))) == 23
    assert excerpt(None) == "None" and excerpt(3) == "3"


# ------------------------------------------------------------------ a checkpoint's model shape


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("n_layer", 2.5, "n_layer: expected int, got 2.5"),  # a traceback on main
        ("n_layer", "2", "n_layer: expected int, got '2'"),
        ("n_embd", [32], "n_embd: expected int, got [32]"),
        ("layer_norm_eps", "small", "layer_norm_eps: expected float, got 'small'"),
        ("tie_embeddings", "yes", "tie_embeddings: expected bool or null, got 'yes'"),
    ],
)
def test_config_fields_are_type_checked(
    tmp_path: Path, field: str, value: object, expected: str
) -> None:
    edit_config(tiny_checkpoint(tmp_path / "model"), model={field: value})
    with pytest.raises(ckpt.CheckpointError, match="model/config.json: bad model shape") as e:
        ckpt.load_model_dir(tmp_path / "model")
    assert expected in str(e.value)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        # 4.5 PB of weights: no address space holds them (main allocated, or died trying)
        ({"n_embd": 2**24}, "transformer.wte.weight is [512, 32] in the weights"),
        # 100,000 blocks take many seconds to build even on the meta device
        ({"n_layer": 10**5}, "100000 layers, 28 tensors"),
    ],
)
def test_a_huge_config_is_refused_before_memory_is_allocated(
    tmp_path: Path, shape: dict[str, int], expected: str
) -> None:
    edit_config(tiny_checkpoint(tmp_path / "model"), model=shape)
    start = time.monotonic()
    with pytest.raises(ckpt.CheckpointError, match="weights do not match config.json") as e:
        ckpt.load_model_dir(tmp_path / "model")
    assert expected in str(e.value)
    assert time.monotonic() - start < 10


def test_weights_are_checked_from_the_header_before_they_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    edit_config(tiny_checkpoint(tmp_path / "model"), model={"n_embd": 64})

    def no_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("weights read before their shapes were checked")

    monkeypatch.setattr(ckpt, "load_file", no_read)
    with pytest.raises(ckpt.CheckpointError, match="wte.weight is \\[512, 32\\] in the weights"):
        ckpt.load_model_dir(tmp_path / "model")
    model = GPT(GPTConfig(block_size=64, vocab_size=512, n_layer=2, n_head=2, n_embd=64))
    with pytest.raises(ckpt.CheckpointError, match="weights do not match"):
        ckpt.load_weights(model, tmp_path / "model")  # training's resume path


# ------------------------------------------------------------------ a Hugging Face directory


@pytest.fixture
def hf_dir(tmp_path: Path) -> Path:
    """A Hugging Face GPT-2 directory with random weights (100 tokens, 2 layers, 16 wide)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_positions=32, n_embd=16, n_layer=2, n_head=2, vocab_size=100)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def edit_hf_config(folder: Path, **fields: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **fields}))


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"n_layer": 2.5}, "n_layer: expected int, got 2.5"),  # a traceback on main
        ({"n_embd": {"a": 1}}, "config.json: "),  # a traceback on main
        ({"n_embd": 2**24}, "wte.weight is [100, 16] in the weights"),
        ({"n_layer": 10**5}, "100000 layers"),
    ],
)
def test_hf_config_is_checked_before_weights_are_read(
    hf_dir: Path, monkeypatch: pytest.MonkeyPatch, fields: dict[str, object], expected: str
) -> None:
    edit_hf_config(hf_dir, **fields)

    def no_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("weights read before their shapes were checked")

    monkeypatch.setattr(hf, "read_weights", no_read)
    with pytest.raises(UnsupportedModelError) as e:
        hf.from_pretrained(hf_dir)
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_hf_index_names_no_file_outside_its_folder(hf_dir: Path, tmp_path: Path) -> None:
    save_file({"x": torch.zeros(1)}, tmp_path / "elsewhere.safetensors")
    (hf_dir / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {"transformer.wte.weight": "../elsewhere.safetensors"}}
    (hf_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UnsupportedModelError, match="index.json: damaged index .*not a"):
        hf.from_pretrained(hf_dir)


def test_hf_dir_still_loads(hf_dir: Path) -> None:
    model = hf.from_pretrained(hf_dir)
    assert model.config.n_embd == 16
    assert all(not p.is_meta for p in model.parameters())
    assert model.lm_head.weight is model.transformer.wte.weight  # tied again after assigning


# ------------------------------------------------------------------ local paths and the hub


@pytest.mark.parametrize("script", ["inference.py", "hellaswag.py"])
def test_a_mistyped_run_folder_is_not_a_hub_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str
) -> None:
    for name, value in OFFLINE.items():  # should anything still try the hub
        monkeypatch.setenv(name, value)
    (tmp_path / "runs" / "gpt2").mkdir(parents=True)
    two_items(tmp_path / "items.jsonl")
    args = ["--model", "runs/gtp2"] if script == "inference.py" else ["-m", "runs/gtp2"]
    args += [] if script == "inference.py" else ["--data", "items.jsonl"]
    result = run_command(tmp_path, script, *args)
    line = user_error(result, "runs/gtp2: no such model directory", "not looked up on the")
    assert "download" not in line


@pytest.mark.parametrize(
    ("name", "local"),
    [
        ("./gpt2", True),
        ("../gpt2", True),
        ("/models/gpt2", True),
        ("~/models/gpt2", True),
        ("me/model/", True),
        ("runs/gtp2", True),  # runs/ exists here
        ("gpt2", False),
        ("openai-community/gpt2", False),
        ("EleutherAI/pythia-160m", False),
    ],
)
def test_names_that_read_as_local_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, local: bool
) -> None:
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    assert looks_local(name) is local
    if local:
        with pytest.raises(ModelNotFoundError, match="not looked up on the Hugging Face hub"):
            hf.hf_folder(name)


# ------------------------------------------------------------------ the HellaSwag download


def fake_upstream(
    folder: Path, monkeypatch: pytest.MonkeyPatch, n_items: int = 5, pin: bool = True
) -> bytes:
    """A local stand-in for the pinned HellaSwag repository: `folder`/src_val.jsonl with
    `n_items` items, served by file:// URL, and the split's expected count (and hash) set to
    it. Returns the whole file's bytes."""
    item = {"ctx": "A man is sitting on a roof. he", "endings": ["a", "b", "c", "d"], "label": 3}
    data = "".join(json.dumps({**item, "ind": i}) + "\n" for i in range(n_items)).encode()
    (folder / "src_val.jsonl").write_bytes(data)
    monkeypatch.setattr(hd, "HELLASWAG_URL", f"file://{folder}/src_{{split}}.jsonl")
    sha256 = hashlib.sha256(data).hexdigest() if pin else None
    monkeypatch.setitem(hd.SPLIT_FILES, "val", hd.SplitFile(n_items, sha256))
    monkeypatch.delenv("HELLASWAG_FILE", raising=False)
    monkeypatch.setenv("HELLASWAG_DIR", str(folder / "cache"))
    return data


def test_the_download_is_pinned_to_a_commit() -> None:
    assert len(hd.HELLASWAG_COMMIT) == 40 and int(hd.HELLASWAG_COMMIT, 16) >= 0
    assert f"/rowanz/hellaswag/{hd.HELLASWAG_COMMIT}/data/" in hd.HELLASWAG_URL
    assert hd.SPLIT_FILES["val"].items == 10_042


def test_a_whole_download_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = fake_upstream(tmp_path, monkeypatch)
    got = hd.download_split("val")
    assert got.read_bytes() == data
    assert os.listdir(tmp_path / "cache") == ["hellaswag_val.jsonl"]
    assert hd.find_hellaswag_file() == got


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda d: d[: d.index(b"\n", 100) + 1], "lines, expected 5"),  # cut after a line
        (lambda d: d[:-20], "not JSON"),  # cut inside the last line
        (lambda d: d.replace(b'"label": 3', b'"label": 2', 1), "SHA-256"),  # same size
    ],
    ids=["truncated-at-a-line", "truncated-mid-line", "corrupted"],
)
def test_a_download_that_is_not_whole_is_not_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage, problem: str
) -> None:
    data = fake_upstream(tmp_path, monkeypatch)
    (tmp_path / "src_val.jsonl").write_bytes(damage(data))  # what the network delivered
    with pytest.raises(hd.HellaSwagError, match=f"not whole .*{problem}"):
        hd.download_split("val")
    assert os.listdir(tmp_path / "cache") == []  # nothing cached, no temp file left
    assert hd.find_hellaswag_file() is None


def test_without_a_pinned_hash_the_items_tell_a_cut_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = fake_upstream(tmp_path, monkeypatch, pin=False)
    (tmp_path / "src_val.jsonl").write_bytes(data[:-20])
    with pytest.raises(hd.HellaSwagError, match="not whole .*not JSON"):
        hd.download_split("val")


def test_a_damaged_cached_file_is_discarded_and_fetched_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = fake_upstream(tmp_path, monkeypatch)
    cached = tmp_path / "cache" / "hellaswag_val.jsonl"
    cached.parent.mkdir()
    cached.write_bytes(data[: len(data) // 2])  # an older download, cut short
    assert hd.resolve_data(None, "val") == cached
    assert cached.read_bytes() == data
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "not a whole download" in lines[0] and str(cached) in lines[0]


def test_offline_a_damaged_cached_file_is_skipped_in_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = fake_upstream(tmp_path, monkeypatch)
    monkeypatch.setattr(hd, "HELLASWAG_URL", "http://127.0.0.1:9/hellaswag_{split}.jsonl")
    cached = tmp_path / "cache" / "hellaswag_val.jsonl"
    cached.parent.mkdir()
    cached.write_bytes(data[:-20])
    said: list[str] = []
    cfg = SimpleNamespace(hellaswag="auto", hellaswag_limit=None)
    assert read_hellaswag(cfg, said.append) is None  # type: ignore[arg-type]
    assert len(said) == 1 and said[0].startswith("hellaswag: skipped (cannot download")
    assert "not a whole download" in capsys.readouterr().err
    assert not cached.exists()
