"""GGUF files for llama.cpp from our Hugging Face exports, written by llama.cpp's own converter.

    python -m gpt.gguf runs/demo/export --out runs/demo/model.gguf --outtype q8_0

The export (`python -m gpt.hf export`, GPT-2 or Qwen3 family) is checked here, then handed to
llama.cpp's `convert_hf_to_gguf.py` in a subprocess: the converter of the llama-cpp-python
release that scripts/install_llama_cpp.sh installs (found in GPT_LLAMA_CPP, default
~/.cache/gpt-alpha/llama.cpp-0.3.36), so that the file is what llama.cpp itself writes and
reads. --outtype: f32, f16 or q8_0 (8-bit weights in blocks of 32 with one scale each).

Tokenisers: GPT-2's own (vocab.json, merges.txt) is recognised by the converter. Ours (a .tkn
byte-level BPE, exported as tokenizer.json) is not: llama.cpp names a pre-tokenizer (the regex
that splits text before the merges) by hashing how a vocabulary tokenises a probe text, and only
published vocabularies are in its list. Our split patterns are ones llama.cpp implements, so
the converter is told the name outright (PRE_TOKENIZERS); tests/test_gguf.py checks that
llama.cpp then tokenises as we do. Refused, with one line and exit 2, before the converter runs:
a family llama.cpp export is not provided for, a model variant we do not implement, another
tokenizer, a .tkn split pattern llama.cpp lacks, and a missing llama.cpp install.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gpt.cli import UserError, option, parse_options, run
from gpt.data.bpe import GPT2_PATTERN, GPT4_PATTERN
from gpt.data.tokeniser import GPTTokeniser, get_tokeniser
from gpt.fsio import atomic_path, read_json_object
from gpt.hf import converter
from gpt.hf_hub import ModelNotFoundError, UnsupportedModelError
from gpt.hf_tokenizer import hf_tokeniser_spec

LLAMA_CPP_VERSION = "0.3.36"  # requirements-gguf.txt's pin, and scripts/install_llama_cpp.sh's
LLAMA_CPP_ENV = "GPT_LLAMA_CPP"
DEFAULT_LLAMA_CPP = Path("~/.cache/gpt-alpha") / f"llama.cpp-{LLAMA_CPP_VERSION}"
CONVERTER = "convert_hf_to_gguf.py"
# Our families whose llama.cpp conversion tests/test_gguf.py checks (llama.cpp's GPT2 and QWEN3).
GGUF_FAMILIES = ("gpt2", "qwen3")
# Our split patterns -> the llama.cpp pre-tokenizer (src/llama-vocab.cpp) that splits with the
# same regex. GPT-2's is llama.cpp's "gpt-2". GPT-4's (cl100k) is llama.cpp's LLAMA3 regex; of the
# names that select it, "dbrx" does nothing else, where "llama-bpe" also turns on ignore_merges
# (a word that is a whole token skips the merges, which can differ from applying them in order,
# as we and tiktoken do). One difference is left, from tiktoken's current form of the pattern
# (`\s++$`, which we use): a text ending in a newline followed by spaces ends in one piece for us
# and two for llama.cpp (the newline, then the spaces); the tokens differ only where the
# tokeniser learned a merge across that newline (only documents' trailing whitespace teaches one).
PRE_TOKENIZERS = {GPT2_PATTERN: "gpt-2", GPT4_PATTERN: "dbrx"}
# Runs the converter (argv[1]) on argv[3:]; with a pre-tokenizer name in argv[2], the vocabulary
# is written under that name instead of the one the converter looks up by hash.
CONVERT_WITH_PRE_TOKENIZER = """
import runpy, sys
converter, pre = sys.argv[1:3]
if pre:
    from conversion.base import TextModel
    TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
sys.argv = [converter, *sys.argv[3:]]
runpy.run_path(converter, run_name="__main__")
"""
# Lines of the converter's output quoted when it fails.
FAILURE_LINES = 20


@dataclass
class GGUFOptions:
    """python -m gpt.gguf: which export, where to, and the weight type."""

    export: str = option(positional=True)
    """A Hugging Face export of one of our models (python -m gpt.hf export): GPT-2 or Qwen3."""
    out: str = option()
    """The GGUF file to write (replaced if it exists), e.g. model.gguf."""
    outtype: Literal["f32", "f16", "q8_0"] = "f16"
    """Weight type: f32, f16, or q8_0 (8 bits a weight, blocks of 32 with one scale)."""


def llama_cpp_dir() -> Path:
    """The folder of llama.cpp's converter (GPT_LLAMA_CPP, else the install script's default);
    a UserError saying how to install it when it is not there."""
    folder = Path(os.environ.get(LLAMA_CPP_ENV) or DEFAULT_LLAMA_CPP).expanduser()
    if not (folder / CONVERTER).is_file():
        raise UserError(
            f"llama.cpp's converter not found in {folder} ({LLAMA_CPP_ENV} or the default); "
            "install it with scripts/install_llama_cpp.sh"
        )
    return folder


def pre_tokenizer(folder: Path) -> str | None:
    """The llama.cpp pre-tokenizer name to tell the converter for the export's tokeniser: None
    for GPT-2's own files (the converter recognises them), PRE_TOKENIZERS' name for our .tkn;
    a UserError for a tokeniser llama.cpp cannot reproduce."""
    spec = hf_tokeniser_spec(folder)
    if spec == "gpt2":
        if not ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()):
            raise UserError(f"{folder}: no tokenizer files (vocab.json and merges.txt)")
        return None
    tok = get_tokeniser(spec)
    if not isinstance(tok, GPTTokeniser) or not (folder / "tokenizer.json").is_file():
        raise UserError(f"{folder}: no tokenizer.json beside {spec} (export it again)")
    if tok.pattern not in PRE_TOKENIZERS:
        raise UserError(
            f"{spec}: its split pattern is not one llama.cpp implements (gpt2 and gpt4 are)"
        )
    return PRE_TOKENIZERS[tok.pattern]


def check_export(folder: Path) -> str | None:
    """Refuse what llama.cpp cannot run (one line each): no export, a family outside
    GGUF_FAMILIES, a variant we do not implement, a foreign tokenizer. Returns the pre-tokenizer
    to tell the converter (see `pre_tokenizer`)."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelNotFoundError(f"{folder}: no config.json (not a Hugging Face export)")
    hf = read_json_object(config_file, UnsupportedModelError)
    model_type = hf.get("model_type")
    if model_type not in GGUF_FAMILIES:
        raise UnsupportedModelError(
            f"{config_file}: model_type {model_type!r} has no llama.cpp export here "
            f"(supported: {', '.join(GGUF_FAMILIES)})"
        )
    converter(hf, str(config_file)).config_from_hf(hf, str(config_file))  # refuses variants
    return pre_tokenizer(folder)


def convert(export: str | Path, out: str | Path, outtype: str = "f16") -> Path:
    """Write `out`, the GGUF file of the export folder, by llama.cpp's converter (atomically).
    A failure of the converter on an export we accepted is a bug: a RuntimeError quoting it."""
    folder = Path(export)
    pre = check_export(folder)
    llama_cpp = llama_cpp_dir()
    env = dict(os.environ)
    # The converter's `conversion` package, and the gguf package of the same release (gguf-py).
    paths = [str(llama_cpp), str(llama_cpp / "gguf-py"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    out = Path(out)
    with atomic_path(out) as tmp:
        command = [sys.executable, "-c", CONVERT_WITH_PRE_TOKENIZER, str(llama_cpp / CONVERTER)]
        command += [pre or "", str(folder), "--outfile", str(tmp), "--outtype", outtype]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-FAILURE_LINES:])
            raise RuntimeError(
                f"llama.cpp's converter failed on {folder} (exit {done.returncode}):\n{tail}"
            )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_options(
        GGUFOptions,
        argv,
        prog="python -m gpt.gguf",
        description="Write a GGUF file for llama.cpp from a Hugging Face export of our model.",
    )
    out = convert(opts.export, opts.out, opts.outtype)
    print(f"wrote {out} ({opts.outtype}, {out.stat().st_size:,} bytes) from {opts.export}")
    return 0


if __name__ == "__main__":
    run(main)
