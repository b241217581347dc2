"""Hugging Face interoperability against transformers with random small GPT-2 models: logits
both ways, loading with no missing or unexpected weights, bit-identical round trips, tokenizer
files, the export command and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gpt.checkpoint import save_model_dir
from gpt.config import GPTConfig
from gpt.hf import from_pretrained, main, save_pretrained
from gpt.hf_hub import ModelNotFoundError, UnsupportedModelError
from gpt.model.gpt2 import GPT

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parent.parent

SHAPES = {
    "square": dict(n_layer=2, n_head=4, n_embd=64, vocab_size=512, block_size=64),
    "non-square": dict(n_layer=5, n_head=3, n_embd=48, vocab_size=1000, block_size=40),
}


def random_hf_model(shape: dict, seed: int = 0) -> transformers.GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_layer=shape["n_layer"],
        n_head=shape["n_head"],
        n_embd=shape["n_embd"],
        vocab_size=shape["vocab_size"],
        n_positions=shape["block_size"],
        initializer_range=0.1,  # larger than GPT-2's 0.02: logits that differ clearly
        bos_token_id=None,
        eos_token_id=None,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # transformers initialises biases and LayerNorms to constants
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name or "ln_f" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def tokens(shape: dict, batch: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, shape["vocab_size"], (batch, shape["block_size"]), generator=g)


def hf_logits(model: transformers.GPT2LMHeadModel, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(idx).logits


@pytest.mark.parametrize("name", SHAPES)
def test_hf_to_ours_logits_match(name: str, tmp_path: Path) -> None:
    shape = SHAPES[name]
    hf = random_hf_model(shape)
    hf.save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path)
    assert ours.config.block_size == shape["block_size"]
    assert ours.config.vocab_size == shape["vocab_size"]
    idx = tokens(shape)
    with torch.no_grad():
        logits, _ = ours(idx)
    torch.testing.assert_close(logits, hf_logits(hf, idx), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", SHAPES)
def test_ours_to_hf_logits_match_without_loading_warnings(
    name: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    shape = SHAPES[name]
    torch.manual_seed(2)
    ours = GPT(GPTConfig(**shape, pad_vocab_multiple=64)).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # non-zero biases, non-unit LayerNorms
    save_pretrained(ours, tmp_path)
    capfd.readouterr()
    hf, info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    err = capfd.readouterr().err
    assert {k: v for k, v in info.items() if v} == {}  # no missing/unexpected/mismatched keys
    for warning in ("newly initialized", "not used", "not initialized", "MISSING", "UNEXPECTED"):
        assert warning not in err
    assert hf.config.vocab_size == shape["vocab_size"]
    assert hf.config.n_positions == shape["block_size"]
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied
    idx = tokens(shape)
    with torch.no_grad():
        logits, _ = ours(idx)
    torch.testing.assert_close(hf_logits(hf.eval(), idx), logits, rtol=0, atol=1e-5)


def test_round_trip_is_bit_identical(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = GPT(GPTConfig(**SHAPES["non-square"]))
    save_pretrained(model, tmp_path)
    loaded = from_pretrained(tmp_path)
    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert before[key].dtype == after[key].dtype
        assert torch.equal(before[key], after[key]), key
    assert loaded.lm_head.weight is loaded.transformer.wte.weight


def test_padded_vocabulary_exports_the_real_rows_only(tmp_path: Path) -> None:
    config = GPTConfig(**SHAPES["non-square"], pad_vocab_multiple=64)
    model = GPT(config)
    assert model.transformer.wte.weight.shape[0] == 1024
    save_pretrained(model, tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    assert weights["transformer.wte.weight"].shape == (1000, 48)
    assert "lm_head.weight" not in weights
    assert weights["transformer.h.0.attn.c_attn.weight"].shape == (48, 144)  # Conv1D: (in, out)
    assert json.loads((tmp_path / "config.json").read_text())["vocab_size"] == 1000
    loaded = from_pretrained(tmp_path)
    assert torch.equal(loaded.transformer.wte.weight, model.transformer.wte.weight[:1000])


def test_bare_gpt2model_bin_with_mask_buffers_loads(tmp_path: Path) -> None:
    """OpenAI's original checkpoints: pytorch_model.bin, no `transformer.` prefix, attn.bias
    mask buffers, an explicit lm_head.weight equal to wte."""
    shape = SHAPES["square"]
    hf = random_hf_model(shape)
    state = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items()}
    state["lm_head.weight"] = state["wte.weight"]
    for i in range(shape["n_layer"]):
        T = shape["block_size"]
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(T, T)).view(1, 1, T, T)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, tmp_path / "pytorch_model.bin")
    hf.config.to_json_file(tmp_path / "config.json")
    ours = from_pretrained(tmp_path)
    idx = tokens(shape)
    with torch.no_grad():
        logits, _ = ours(idx)
    torch.testing.assert_close(logits, hf_logits(hf, idx), rtol=0, atol=1e-5)


def test_gpt2_tokenizer_files_load_in_transformers(tmp_path: Path, gpt2_bpe_dir: Path) -> None:
    from gpt.data.tokeniser import get_tokeniser

    tok = get_tokeniser("gpt2")
    model = GPT(GPTConfig(block_size=32, vocab_size=50257, n_layer=1, n_head=2, n_embd=16))
    save_pretrained(model, tmp_path, tokeniser=tok)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["eos_token_id"] == config["bos_token_id"] == 50256
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = "Hello world, it's 2024!\n\n  naïve café 😀<|endoftext|>"
    assert hf_tok(text)["input_ids"] == tok.encode(text, allowed_special="all")
    assert hf_tok.eos_token_id == 50256


def test_custom_tokeniser_exports_a_fast_tokenizer(tmp_path: Path) -> None:
    from gpt.data.tokeniser import GPTTokeniser

    docs = ["The quick brown fox jumps over the lazy dog. 1234 + 5678 = 6912!"] * 20
    docs += ["Ünïcödé naïve café, déjà vu; ?!  spaces\n\ttabs\n"] * 20
    tok = GPTTokeniser.train(docs, vocab_size=300)
    tok.save(tmp_path / "small.tkn")
    model = GPT(GPTConfig(block_size=32, vocab_size=300, n_layer=1, n_head=2, n_embd=16))
    save_pretrained(model, tmp_path / "export", tokeniser=str(tmp_path / "small.tkn"))
    assert (tmp_path / "export" / "tokeniser.tkn").is_file()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "export")
    for text in [docs[0], docs[-1], "unseen wörds 9999<|endoftext|>x  \n", "😀 emoji"]:
        ids = tok.encode(text, allowed_special="all")
        assert hf_tok(text)["input_ids"] == ids
        assert hf_tok.decode(ids) == text
    assert hf_tok.eos_token_id == tok.eot_token


def test_non_gpt2_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UnsupportedModelError, match="model_type is 'llama'"):
        from_pretrained(tmp_path)


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no such model directory"):
        from_pretrained(tmp_path / "nope")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        from_pretrained(tmp_path)


def test_offline_hub_name_says_how_to_use_a_local_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    import gpt.hf_hub

    def unreachable(*args: object, **kwargs: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(gpt.hf_hub.socket, "create_connection", unreachable)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ModelNotFoundError, match="--local-dir DIR") as e:
        from_pretrained("gpt2")
    assert "\n" not in str(e.value)


def test_export_command(tmp_path: Path, gpt2_bpe_dir: Path) -> None:
    torch.manual_seed(4)
    model = GPT(GPTConfig(block_size=32, vocab_size=50257, n_layer=1, n_head=2, n_embd=16))
    save_model_dir(model, tmp_path / "ckpt", tokeniser_spec="gpt2")
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "out")]) == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [
        "README.md",
        "config.json",
        "merges.txt",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer_config.json",
        "vocab.json",
    ]
    loaded = from_pretrained(tmp_path / "out")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_export_command_bad_input(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gpt.hf", "export", str(tmp_path / "nope"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
