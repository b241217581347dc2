"""The tokenizer files of a Hugging Face export, and the tokeniser an export bundles.

    python -m gpt.hf export runs/demo/checkpoints/best runs/demo/export     (writes them)

For GPT-2's tokeniser an export holds GPT-2's own vocab.json and merges.txt (copied from the
files the tokeniser was read from); for our byte-level BPE (`GPTTokeniser`) a `tokenizer.json`
that transformers' `PreTrainedTokenizerFast` loads and that encodes exactly as we do, plus the
`.tkn` file itself, which `hf_tokeniser_spec` finds again when the export is loaded back.
"""

from __future__ import annotations

from pathlib import Path

from gpt.cli import UserError
from gpt.data.bpe import ENDOFTEXT, bytes_to_unicode
from gpt.data.tokeniser import GPT2Tokeniser, GPTTokeniser, Tokeniser, gpt2_bpe_files
from gpt.fsio import copy_atomic, write_json_atomic, write_text_atomic

TKN_FILE = "tokeniser.tkn"


def tokenizer_json(tokeniser: GPTTokeniser) -> str:
    """A `tokenizers` tokenizer.json for our byte-level BPE (GPTTokeniser): its merges in order,
    its pre-split regex, byte-level alphabet and special tokens, so that transformers'
    PreTrainedTokenizerFast encodes exactly as we do."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    chars = bytes_to_unicode()

    def text(i: int) -> str:
        return "".join(chars[b] for b in tokeniser.token_bytes(i))

    n_tokens = 256 + len(tokeniser.merges)
    vocab = {text(i): i for i in range(n_tokens)}
    merges = [(text(a), text(b)) for a, b in tokeniser.merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(tokeniser.pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = sorted(tokeniser.special_tokens.items(), key=lambda kv: kv[1])
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s, _ in specials])
    for s, i in specials:
        if tok.token_to_id(s) != i:
            raise ValueError(f"special token {s!r} would get id {tok.token_to_id(s)}, not {i}")
    return tok.to_str()


def write_tokeniser_files(out_dir: Path, tokeniser: Tokeniser, block_size: int) -> None:
    """The tokenizer files transformers' AutoTokenizer loads (see the module docstring)."""
    eot = ENDOFTEXT if ENDOFTEXT in tokeniser.special_tokens else None
    specials = {"bos_token": eot, "eos_token": eot, "unk_token": eot}
    if isinstance(tokeniser, GPT2Tokeniser):
        encoder, bpe = gpt2_bpe_files(tokeniser.bpe_dir)
        copy_atomic(encoder, out_dir / "vocab.json")
        copy_atomic(bpe, out_dir / "merges.txt")
        tokenizer_class = "GPT2Tokenizer"
    elif isinstance(tokeniser, GPTTokeniser):
        spec = Path(tokeniser.spec)
        write_text_atomic(out_dir / "tokenizer.json", tokenizer_json(tokeniser))
        if spec.is_file():
            copy_atomic(spec, out_dir / TKN_FILE)
        tokenizer_class = "PreTrainedTokenizerFast"
    else:
        raise ValueError(f"cannot write Hugging Face tokenizer files for {tokeniser!r}")
    write_json_atomic(out_dir / "special_tokens_map.json", specials)
    write_json_atomic(
        out_dir / "tokenizer_config.json",
        {
            "tokenizer_class": tokenizer_class,
            "model_max_length": block_size,
            "add_prefix_space": False,
            "add_bos_token": False,
            "clean_up_tokenization_spaces": False,
            **specials,
        },
    )


def hf_tokeniser_spec(folder: str | Path) -> str:
    """The tokeniser of a Hugging Face directory: its bundled .tkn file (our export), else
    "gpt2" (GPT-2's vocab.json and merges.txt, or no tokenizer files); a tokenizer.json of
    another tokenizer (a Qwen3 from the hub) is one our models cannot run: a UserError."""
    folder = Path(folder)
    tkn = folder / TKN_FILE
    if tkn.is_file():
        return str(tkn.resolve())
    if (folder / "tokenizer.json").is_file() and not (folder / "merges.txt").is_file():
        raise UserError(
            f"{folder}: its tokenizer.json is not a tokeniser our models run; pass --tokeniser, "
            "or run it in transformers (hellaswag.py does, eval/run_eval.sh too)"
        )
    return "gpt2"
