"""inference.py: sampling from our checkpoints and from Hugging Face exports, streaming, seeds,
and one-line errors for bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt.capability import describe, native_bfloat16
from gpt.checkpoint import save_model_dir
from gpt.cli import UserError, run
from gpt.config import GPTConfig
from gpt.hf import load_model, save_pretrained
from gpt.model.cpu_decode import describe_layout, layout_for
from gpt.model.gpt2 import GPT

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import inference  # noqa: E402  (the entry point lives at the project root)

GPT2_VOCAB = GPTConfig(block_size=64, vocab_size=50257, n_layer=2, n_head=2, n_embd=32,
                       pad_vocab_multiple=64)  # fmt: skip


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory, gpt2_bpe_dir: Path) -> tuple[Path, Path]:
    """A tiny checkpoint of ours (GPT-2 tokeniser) and its Hugging Face export."""
    torch.manual_seed(0)
    model = GPT(GPT2_VOCAB)
    root = tmp_path_factory.mktemp("inference")
    save_model_dir(model, root / "ckpt", tokeniser_spec="gpt2")
    save_pretrained(model, root / "export", tokeniser="gpt2")
    return root / "ckpt", root / "export"


def run_inference(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "inference.py"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        timeout=120,
    )


def test_checkpoint_and_export_sample_the_same(dirs: tuple[Path, Path]) -> None:
    device = torch.device("cpu")
    texts = []
    for d in dirs:
        lm = load_model(str(d), device)
        model, tok = lm.model, lm.tokeniser
        assert tok.name == "gpt2"
        texts.append(
            inference.sample(
                model, tok, "Hello there", max_tokens=12, num_samples=3, top_k=50, seed=5
            )
        )
    assert texts[0] == texts[1]  # same weights, seed and settings
    assert all(t.startswith("Hello there") for t in texts[0])
    assert len(set(texts[0])) == 3  # three different samples of one prompt


def test_seed_makes_samples_reproducible(dirs: tuple[Path, Path]) -> None:
    lm = load_model(str(dirs[0]), torch.device("cpu"))
    model, tok = lm.model, lm.tokeniser
    kwargs = dict(max_tokens=10, num_samples=2, temperature=0.8, top_p=0.9)
    a = inference.sample(model, tok, "The", seed=1, **kwargs)
    assert a == inference.sample(model, tok, "The", seed=1, **kwargs)
    assert a != inference.sample(model, tok, "The", seed=2, **kwargs)


def test_stream_pieces_join_to_the_greedy_sample(dirs: tuple[Path, Path]) -> None:
    lm = load_model(str(dirs[0]), torch.device("cpu"))
    model, tok = lm.model, lm.tokeniser
    pieces = list(inference.stream(model, tok, "Once upon", max_tokens=15, temperature=0))
    [text] = inference.sample(model, tok, "Once upon", max_tokens=15, num_samples=1, temperature=0)
    assert "Once upon" + "".join(pieces) == text


def test_command_on_checkpoint_and_export(dirs: tuple[Path, Path]) -> None:
    for d, extra in ((dirs[0], []), (dirs[1], ["--stream"])):
        result = run_inference(
            "--model", str(d), "--prompt", "Hi", "--max-tokens", "8", "--seed", "3",
            "--device", "cpu", "--num-samples", "2", *extra,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("--- sample") == 2
        assert result.stdout.count("\nHi") == 2


@pytest.fixture
def sampled_dtypes(monkeypatch: pytest.MonkeyPatch) -> list[torch.dtype]:
    """The weight dtype of every model inference.sample is called with from here on."""
    seen: list[torch.dtype] = []
    real_sample = inference.sample

    def recording_sample(model: GPT, *args: object, **kwargs: object) -> list[str]:
        seen.append(model.lm_head.weight.dtype)
        return real_sample(model, *args, **kwargs)

    monkeypatch.setattr(inference, "sample", recording_sample)
    return seen


def test_bfloat16_samples_with_bfloat16_weights(
    dirs: tuple[Path, Path], sampled_dtypes: list[torch.dtype], capsys: pytest.CaptureFixture[str]
) -> None:
    """--dtype bfloat16 decodes with the weights (and so the cache) in bfloat16, and prints what
    the bfloat16 model's greedy samples are."""
    lm = load_model(str(dirs[0]), torch.device("cpu"))
    model16 = lm.model.to(torch.bfloat16)
    [expected] = inference.sample(model16, lm.tokeniser, "Hi", max_tokens=8, num_samples=1,
                                  temperature=0)  # fmt: skip
    sampled_dtypes.clear()
    argv = ["--model", str(dirs[0]), "--prompt", "Hi", "--max-tokens", "8", "--temperature", "0",
            "--num-samples", "1", "--device", "cpu", "--dtype", "bfloat16"]  # fmt: skip
    assert inference.main(argv) == 0
    assert sampled_dtypes == [torch.bfloat16]
    assert capsys.readouterr().out == f"--- sample 1\n{expected}\n"


@pytest.mark.cpu_dependent
def test_dtype_auto_decodes_in_the_devices_fast_dtype(
    dirs: tuple[Path, Path], sampled_dtypes: list[torch.dtype], capsys: pytest.CaptureFixture[str]
) -> None:
    """--dtype auto decodes in bfloat16 where the CPU multiplies it natively, float32 elsewhere
    (the predicate the code asks), and says so in one line on stderr, with the weight layout
    the CPU's rule picks for one sequence."""
    cpu = torch.device("cpu")
    expected = "bfloat16" if native_bfloat16(cpu) else "float32"
    argv = ["--model", str(dirs[0]), "--prompt", "Hi", "--max-tokens", "2", "--num-samples", "1",
            "--device", "cpu", "--dtype", "auto"]  # fmt: skip
    assert inference.main(argv) == 0
    assert sampled_dtypes == [getattr(torch, expected)]
    layout = describe_layout(layout_for(GPT(GPT2_VOCAB).to(getattr(torch, expected)), 1))
    assert capsys.readouterr().err == f"{describe(cpu)} -> decoding in {expected}, {layout}\n"


def test_missing_model_is_one_line_error(tmp_path: Path) -> None:
    result = run_inference("--model", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_offline_hub_name_is_one_line_error(tmp_path: Path) -> None:
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    result = run_inference("--model", "gpt2", "--max-tokens", "1", env=env)
    assert result.returncode == 2
    assert "--local-dir" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--temperature", "-1"], "temperature"),
        (["--num-samples", "0"], "num-samples"),
        (["--top-p", "2"], "top_p"),
        (["--device", "tpu"], "device"),
        (["--dtype", "float16"], "dtype"),
    ],
)
def test_bad_settings_are_refused(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        run(inference.main, ["--model", "unused", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_tokeniser_larger_than_the_model_is_refused(tmp_path: Path, gpt2_bpe_dir: Path) -> None:
    save_model_dir(GPT(GPTConfig(block_size=16, vocab_size=512, n_layer=1, n_head=1, n_embd=8)),
                   tmp_path / "small", tokeniser_spec="gpt2")  # fmt: skip
    with pytest.raises(UserError, match="50257 tokens but the model only 512"):
        load_model(str(tmp_path / "small"), torch.device("cpu"))
