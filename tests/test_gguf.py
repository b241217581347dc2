"""GGUF export (gpt/gguf.py) checked in llama.cpp itself, through llama-cpp-python: for both
families and both kinds of tokeniser, `python -m gpt.gguf` on an export, then llama.cpp's
tokenisation, greedy decoding and log-probabilities against ours; and the refusals.

    python -m pytest tests/test_gguf.py

The llama.cpp tests skip where llama-cpp-python or the converter is absent (install both with
scripts/install_llama_cpp.sh; .ci/run does).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from gpt.cli import UserError, run
from gpt.config import model_preset
from gpt.data.sources import iter_documents
from gpt.data.tokeniser import GPTTokeniser, Tokeniser, get_tokeniser
from gpt.gguf import LLAMA_CPP_ENV, llama_cpp_dir, main
from gpt.hf import save_pretrained
from gpt.model.base import LanguageModel
from gpt.model.families import build_model
from gpt.model.generate import generate

ROOT = Path(__file__).resolve().parent.parent
# Contractions, numbers, runs of spaces, newlines, tabs, punctuation and non-ASCII letters: where
# pre-tokenizers differ. (Not ending in a newline and spaces: see PRE_TOKENIZERS in gpt/gguf.py.)
TEXT = "We've 12345 cats; I'LL say:\n\n    def f(x):\treturn x  # ok!? Café über"
PROMPT_TOKENS = 8
NEW_TOKENS = 32
# float32 on both sides: each rounding is off by eps = 1.2e-7 relatively; the logits are sums over
# at most 128 terms after two blocks, and the two sides sum in different orders, so ~1e2 * eps *
# max|logit| (about 10 here) ~ 1e-4 at most; log_softmax at most doubles an error on the logits
# (it subtracts their logsumexp, which moves by at most the largest logit error).
F32_LOGPROB_ATOL = 2e-4
# llama.cpp's GELU (GPT-2's MLP) reads a table at the input rounded to float16, a relative error
# of 2**-11 per activation: each MLP's output, and with it the residual stream and the logits,
# moves by up to 2**-11 relatively, once per layer; doubled again by log_softmax.
GELU_TABLE_ERROR = 2.0**-11
Q8_0_BLOCK = 32


def q8_0_round_trip(t: torch.Tensor) -> torch.Tensor:
    """t after ggml's q8_0 along its last dimension (gguf-py's quantizer for weights, ggml's
    quantize_row_q8_0 for activations, alike): per block of 32, scale d = max|x| / 127, x
    rounded to round(x / d) * d with d stored as float16. Each value moves by at most d / 2 =
    max|x| / 254, plus the float16 rounding of d (2**-11 relatively)."""
    b = t.reshape(*t.shape[:-1], -1, Q8_0_BLOCK)
    d = b.abs().amax(-1, keepdim=True) / 127
    q = torch.round(b * torch.where(d > 0, 1 / d, 0))
    return (q * d.half().float()).reshape(t.shape)


@torch.no_grad()
def q8_0_logprobs(model: LanguageModel, ids: list[int]) -> torch.Tensor:
    """Our log-probabilities with q8_0 rounding where llama.cpp rounds: every matrix the
    converter stores as q8_0 (all but GPT-2's position table, which stays float32), and the
    activations entering each matmul with such a weight (ggml's q8_0 dot product quantises them
    too), the head's included."""
    quantised = build_model(model.config).eval()
    quantised.load_state_dict(model.state_dict())
    for name, p in quantised.named_parameters():
        if p.dim() == 2 and "wpe" not in name:
            p.copy_(q8_0_round_trip(p))

    def linear(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return F.linear(q8_0_round_trip(x), layer.weight, layer.bias)

    h = quantised.hidden(torch.tensor([ids]), linear=linear)
    return torch.log_softmax(quantised.logits(q8_0_round_trip(h))[0].double(), -1)


# --------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def llama() -> Any:
    """llama_cpp.Llama; skip where llama-cpp-python or llama.cpp's converter is absent."""
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python not installed (scripts/install_llama_cpp.sh)"
    )
    try:
        llama_cpp_dir()
    except UserError as e:
        pytest.skip(str(e))
    return llama_cpp.Llama


def our_tokeniser(folder: Path, pattern: str) -> Tokeniser:
    """One of our .tkn BPEs: 512 tokens trained on 40 python-docs documents, split by `pattern`."""
    docs = list(iter_documents("python-docs", max_docs=40))
    GPTTokeniser.train(docs, 512, pattern=pattern).save(folder / f"{pattern}.tkn")
    return GPTTokeniser(folder / f"{pattern}.tkn")


def random_model(arch: str, vocab_size: int) -> LanguageModel:
    """`tiny` (gpt2) or `modern-tiny` (qwen3) with random weights whose logits are decisive
    (std ~3, so greedy decoding has clear winners): embeddings and head N(0, 0.5), the other
    matrices N(0, 0.5 / sqrt(fan_in)) (a mild residual stream, where rounding errors do not
    grow), norm gains 1 + N(0, 0.2), biases N(0, 0.1)."""
    torch.manual_seed(0)
    model = build_model(
        model_preset("tiny" if arch == "gpt2" else "modern-tiny", vocab_size=vocab_size)
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif p.dim() == 1:
                p.normal_(0.0, 0.1)
            elif any(k in name for k in ("wte", "wpe", "embed_tokens", "lm_head")):
                p.normal_(0.0, 0.5)
            else:
                p.normal_(0.0, 0.5 / math.sqrt(p.shape[1]))
    return model.eval()


def gguf_command(*args: str) -> list[str]:
    """`python -m gpt.gguf ARGS`, as a user runs it (see `run_in`)."""
    return [sys.executable, "-m", "gpt.gguf", *args]


def run_in(cwd: Path, command: list[str]) -> subprocess.Popen[str]:
    """`command` started in `cwd` with this checkout importable, its output captured."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


# (family, tokeniser, outtype): both families in float32 and q8_0, with GPT-2's tokeniser and
# our .tkn of GPT-4's pattern; our .tkn of GPT-2's pattern in float32.
CONVERSIONS = [
    ("gpt2", "gpt2", "f32"),
    ("gpt2", "gpt2", "q8_0"),
    ("qwen3", "tkn-gpt4", "f32"),
    ("qwen3", "tkn-gpt4", "q8_0"),
    ("gpt2", "tkn-gpt2", "f32"),
]
Converted = dict[tuple[str, str, str], tuple[LanguageModel, Tokeniser, Path]]


@pytest.fixture(scope="module")
def converted(llama: Any, tmp_path_factory: pytest.TempPathFactory) -> Converted:
    """CONVERSIONS -> (the random model, its tokeniser, the GGUF file `python -m gpt.gguf` wrote
    from its export); the conversions run side by side (each is mostly imports)."""
    root = tmp_path_factory.mktemp("gguf")
    toks = {
        "gpt2": get_tokeniser("gpt2"),
        "tkn-gpt4": our_tokeniser(root, "gpt4"),
        "tkn-gpt2": our_tokeniser(root, "gpt2"),
    }
    out: Converted = {}
    running = []
    for arch, tok_name, outtype in CONVERSIONS:
        tok = toks[tok_name]
        model = random_model(arch, tok.n_vocab)
        export = f"{arch}-{tok_name}"
        if not (root / export).is_dir():
            save_pretrained(model, root / export, tok)
        gguf = f"{export}.{outtype}.gguf"
        command = gguf_command(export, "--out", gguf, "--outtype", outtype)
        running.append((gguf, outtype, run_in(root, command)))
        out[arch, tok_name, outtype] = (model, tok, root / gguf)
    for gguf, outtype, process in running:
        stdout, stderr = process.communicate()
        assert process.returncode == 0, stderr
        assert f"wrote {gguf} ({outtype}" in stdout
    return out


@pytest.fixture
def open_gguf(llama: Any) -> Iterator[Callable[[Path, int], Any]]:
    """Path, context length -> a llama.cpp model (float32 key/value cache, so that float32 files
    are float32 end to end), closed after the test."""
    from llama_cpp import GGML_TYPE_F32

    opened: list[Any] = []

    def open_(path: Path, n_ctx: int) -> Any:
        opened.append(
            llama(
                model_path=str(path),
                n_ctx=n_ctx,
                logits_all=True,
                verbose=False,
                type_k=GGML_TYPE_F32,
                type_v=GGML_TYPE_F32,
            )
        )
        return opened[-1]

    yield open_
    for m in opened:
        m.close()


def llama_logprobs(llm: Any, ids: list[int]) -> torch.Tensor:
    """llama.cpp's log-probabilities (T, vocab) of the next token after each of `ids`."""
    llm.reset()
    llm.eval(ids)
    return torch.log_softmax(torch.tensor(llm.scores[: len(ids)]).double(), -1)


@torch.no_grad()
def our_logprobs(model: LanguageModel, ids: list[int]) -> torch.Tensor:
    return torch.log_softmax(model(torch.tensor([ids]))[0][0].double(), -1)


def f32_tolerance(model: LanguageModel, ids: list[int]) -> float:
    """How far llama.cpp's float32 log-probs may be from ours (see F32_LOGPROB_ATOL and
    GELU_TABLE_ERROR): roundoff, plus GPT-2's GELU table."""
    if model.config.arch != "gpt2":
        return F32_LOGPROB_ATOL
    with torch.no_grad():
        largest = model(torch.tensor([ids]))[0].abs().max().item()
    return F32_LOGPROB_ATOL + 2 * model.config.n_layer * GELU_TABLE_ERROR * largest


# --------------------------------------------------------------------------------- llama.cpp

CASES = [("gpt2", "gpt2"), ("qwen3", "tkn-gpt4"), ("gpt2", "tkn-gpt2")]


@pytest.mark.parametrize(("arch", "tok_name"), CASES)
def test_float32_gguf_tokenises_decodes_and_scores_as_we_do(
    arch: str, tok_name: str, converted: Converted, open_gguf: Any
) -> None:
    model, tok, path = converted[arch, tok_name, "f32"]
    llm = open_gguf(path, model.config.block_size)
    ids = tok.encode_ordinary(TEXT)
    assert len(ids) <= model.config.block_size
    assert llm.tokenize(TEXT.encode(), add_bos=False, special=False) == ids
    assert llm.detokenize(ids).decode() == TEXT

    prompt = ids[:PROMPT_TOKENS]
    ours = generate(model, torch.tensor([prompt]), NEW_TOKENS, temperature=0)[0].tolist()
    tol = f32_tolerance(model, ids)
    with torch.no_grad():  # decisive: no step of our greedy path is a near-tie within tolerance
        top2 = model(torch.tensor([ours[:-1]]))[0][0, PROMPT_TOKENS - 1 :].topk(2).values
    assert (top2[:, 0] - top2[:, 1]).min().item() > 2 * tol, "random model not decisive"
    theirs = llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0)
    assert [next(theirs) for _ in range(NEW_TOKENS)] == ours[PROMPT_TOKENS:]

    gap = (llama_logprobs(llm, ids) - our_logprobs(model, ids)).abs().max().item()
    assert gap <= tol


@pytest.mark.parametrize(("arch", "tok_name"), CASES[:2])
def test_q8_0_gguf_scores_within_the_quantisation_error(
    arch: str, tok_name: str, converted: Converted, open_gguf: Any
) -> None:
    """q8_0 moves each weight, and each activation entering a q8_0 matmul, by at most
    max|block| / 254. The log-probs of our model with exactly that rounding (q8_0_logprobs) are
    off ours by `effect`, the quantisation's error on this model and text. llama.cpp computes
    that same rounded model up to float32 roundoff (and GPT-2's GELU table), except for values
    that roundoff puts on the other side of a rounding boundary: each is then off by one whole
    step instead of at most half of one, at most doubling its share of the error. So llama.cpp
    is within 2 * effect (+ the float32 tolerance) of ours; a wrong tensor, scale or layout
    would be off by the logits' own size (~3)."""
    model, tok, path = converted[arch, tok_name, "q8_0"]
    ids = tok.encode_ordinary(TEXT)
    ours = our_logprobs(model, ids)
    effect = (q8_0_logprobs(model, ids) - ours).abs().max().item()
    assert 1e-3 < effect < 1.0  # the rounding does something, and the model is not chaotic
    llm = open_gguf(path, model.config.block_size)
    gap = (llama_logprobs(llm, ids) - ours).abs().max().item()
    assert gap <= 2 * effect + f32_tolerance(model, ids)


# --------------------------------------------------------------------------------- bad input


def refusal(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """`python -m gpt.gguf ARGV` in this process: its one error line (asserting exit code 2)."""
    with pytest.raises(SystemExit) as exit_:
        run(main, argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    return err


def test_a_family_llama_cpp_lacks_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "export").mkdir()
    config = {"model_type": "mamba", "architectures": ["MambaForCausalLM"]}
    (tmp_path / "export" / "config.json").write_text(json.dumps(config), encoding="utf-8")
    process = run_in(tmp_path, gguf_command("export", "--out", "m.gguf"))
    _, stderr = process.communicate()
    assert process.returncode == 2
    assert stderr == (
        "error: export/config.json: model_type 'mamba' has no llama.cpp export here "
        "(supported: gpt2, qwen3)\n"
    )
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"model_type": "qwen3", "attention_bias": True}, "unsupported Qwen3 variant"),
        ({"model_type": "gpt2", "n_embd": 32, "n_head": 2}, "no tokenizer files"),
    ],
)
def test_an_unsupported_model_is_refused_before_conversion(
    config: dict[str, Any],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "config.json").write_text(json.dumps(config), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert message in refusal(["export", "--out", "m.gguf"], capsys)
    assert not (tmp_path / "m.gguf").exists()


def test_an_unimplemented_split_pattern_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tok = GPTTokeniser.train(["ab ab ab cd"] * 5, 260, pattern=r"\S+|\s+")
    tok.save(tmp_path / "custom.tkn")
    model = random_model("qwen3", tok.n_vocab)
    save_pretrained(model, tmp_path / "export", GPTTokeniser(tmp_path / "custom.tkn"))
    monkeypatch.chdir(tmp_path)
    err = refusal(["export", "--out", "m.gguf"], capsys)
    assert "split pattern is not one llama.cpp implements" in err


def test_a_missing_converter_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tok = our_tokeniser(tmp_path, "gpt2")
    save_pretrained(random_model("gpt2", tok.n_vocab), tmp_path / "export", tok)
    monkeypatch.setenv(LLAMA_CPP_ENV, str(tmp_path / "no-llama.cpp"))
    monkeypatch.chdir(tmp_path)
    err = refusal(["export", "--out", "m.gguf", "--outtype", "q8_0"], capsys)
    assert "no-llama.cpp" in err and "scripts/install_llama_cpp.sh" in err
    assert not (tmp_path / "m.gguf").exists()
