"""Tests of gpt/data/tokeniser.py and gpt/data/bpe.py: GPT-2 against `transformers`, our BPE
against hand-worked merges, a pure-Python BPE and the `tokenizers` trainer, round trips, the .tkn
format and the tokeniser.py command.

    pytest tests/test_tokeniser.py -q
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt.cli import parse_options
from gpt.data.bpe import (
    ENDOFTEXT,
    GPT2_PATTERN,
    GPT4_PATTERN,
    PATTERNS,
    TokeniserError,
    bytes_to_unicode,
)
from gpt.data.tokeniser import GPTTokeniser, TokeniserOptions, get_tokeniser, use_gpt2_bpe_dir

ROOT = Path(__file__).resolve().parent.parent

HARD_STRINGS = [
    "",
    " ",
    "Hello, world!",
    "emoji 😀👍🏽 and a family 👨‍👩‍👧‍👦 flag 🇫🇷",
    "中文字符和日本語のテキスト 한국어",
    "e\u0301 a\u0308 combining marks \u0301\u0301\u0301 alone",
    "control \x00\x01\x07\x1b[31m \x7f \t\r\n\x0b\x0c \u2028\u2029 \ufeff",
    " " * 1000 + "x" + " " * 333,
    "\n" * 50 + "\r\n" * 20,
    "numbers 0 12 123 1234 12345678901234567890 3.14159 -2e10 1,000,000 ٣٤٥",
    "mixed: Ελληνικά русский עברית العربية हिन्दी ไทย",
    "I'm you're they'LL it's DON'T 'twas",
    "tabs\t\tand  double  spaces   end   ",
    "<|endoftext > <| endoftext|> endoftext",
    "\U0010ffff \ue000 private use, \U0001d11e music",
]


def corpus_text(shared_data: Path, n_chars: int) -> str:
    """`n_chars` of Shakespeare and WikiText, half each."""
    corpora = shared_data / "corpora"
    half = n_chars // 2
    shakespeare = (corpora / "tinyshakespeare.txt").read_text(encoding="utf-8")[:half]
    wiki = (corpora / "wikitext2_valid.txt").read_text(encoding="utf-8")[:half]
    return shakespeare + wiki


def documents(text: str) -> list[str]:
    return [d for d in text.split("\n\n") if d]


@pytest.fixture(scope="module")
def train_docs(shared_data: Path) -> list[str]:
    return documents(corpus_text(shared_data, 400_000))


@pytest.fixture(scope="module")
def tok(train_docs: list[str]) -> GPTTokeniser:
    """Our BPE with 1000 ids, trained once on 400 KB of real text."""
    return GPTTokeniser.train(train_docs, vocab_size=1000)


@pytest.fixture(scope="module")
def gpt2(gpt2_bpe_dir: Path) -> object:
    """GPT-2 from the shared files."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPT2_BPE_DIR", str(gpt2_bpe_dir))
        return get_tokeniser("gpt2")


# GPT-2 ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_gpt2(gpt2_bpe_dir: Path) -> object:
    transformers = pytest.importorskip("transformers")
    return transformers.GPT2TokenizerFast(
        vocab=str(gpt2_bpe_dir / "encoder.json"), merges=str(gpt2_bpe_dir / "vocab.bpe")
    )


@pytest.mark.parametrize("name", ["tinyshakespeare.txt", "wikitext2_valid.txt"])
def test_gpt2_matches_transformers_on_real_text(gpt2, hf_gpt2, shared_data: Path, name: str):
    text = (shared_data / "corpora" / name).read_text(encoding="utf-8")[:300_000]
    ids = gpt2.encode_ordinary(text)
    assert ids == hf_gpt2(text)["input_ids"]
    assert gpt2.decode(ids) == text


@pytest.mark.parametrize("text", HARD_STRINGS)
def test_gpt2_matches_transformers_on_hard_strings(gpt2, hf_gpt2, text: str):
    ids = gpt2.encode(text)
    assert ids == hf_gpt2(text)["input_ids"]
    assert gpt2.decode(ids) == text


def test_gpt2_properties(gpt2, hf_gpt2):
    assert (gpt2.n_vocab, gpt2.eot_token, gpt2.name, gpt2.spec) == (50257, 50256, "gpt2", "gpt2")
    assert gpt2.encode(ENDOFTEXT, allowed_special="all") == hf_gpt2(ENDOFTEXT)["input_ids"]
    assert len(gpt2.fingerprint) == 64
    assert pickle.loads(pickle.dumps(gpt2)).encode("a b") == gpt2.encode("a b")


def test_gpt2_pattern_is_tiktokens():
    tiktoken_public = pytest.importorskip("tiktoken_ext.openai_public")
    assert GPT2_PATTERN == tiktoken_public.r50k_pat_str


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def offline_env(cache_dir: Path) -> dict[str, str]:
    """No GPT2_BPE_DIR, tiktoken's cache at `cache_dir`, and a proxy that refuses at once."""
    env = {k: v for k, v in os.environ.items() if k not in ("GPT2_BPE_DIR",)}
    env.update(
        TIKTOKEN_CACHE_DIR=str(cache_dir),
        HTTPS_PROXY="http://127.0.0.1:9",
        https_proxy="http://127.0.0.1:9",
        PYTHONPATH=str(ROOT),
    )
    return env


def test_gpt2_offline_without_files_fails_with_one_clear_line(tmp_path: Path):
    code = (
        "from gpt.data.bpe import TokeniserError\nfrom gpt.data.tokeniser import get_tokeniser\n"
        "try:\n    get_tokeniser('gpt2')\nexcept TokeniserError as e:\n    print(e)\n"
    )
    result = run_python(code, offline_env(tmp_path))
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert "\n" not in message
    for needed in ("encoder.json", "vocab.bpe", "--gpt2-bpe-dir", "GPT2_BPE_DIR"):
        assert needed in message
    assert "TIKTOKEN_CACHE_DIR" in message


def test_gpt2_unreachable_host_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Without a proxy, an unreachable host is reported before tiktoken's untimed download."""
    import gpt.data.tokeniser as module

    def unreachable(address: tuple[str, int], timeout: float) -> None:
        raise OSError("network is unreachable")

    for var in ("GPT2_BPE_DIR", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(module.socket, "create_connection", unreachable)
    with pytest.raises(TokeniserError, match="unreachable.*encoder.json and vocab.bpe"):
        get_tokeniser("gpt2")


def test_gpt2_from_tiktokens_cache_equals_gpt2_from_folder(gpt2, gpt2_bpe_dir: Path, tmp_path):
    """tiktoken's own get_encoding("gpt2"), fed from its cache, gives our fingerprint."""
    urls = {
        "vocab.bpe": "6d1cbeee0f20b3d9449abfede4726ed8212e3aee",
        "encoder.json": "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6",
    }
    for name, key in urls.items():
        shutil.copy(gpt2_bpe_dir / name, tmp_path / key)
    code = "from gpt.data.tokeniser import get_tokeniser\nprint(get_tokeniser('gpt2').fingerprint)"
    result = run_python(code, offline_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == gpt2.fingerprint


def test_gpt2_bpe_dir_missing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GPT2_BPE_DIR", str(tmp_path))
    with pytest.raises(TokeniserError, match=r"encoder\.json and vocab\.bpe not found"):
        get_tokeniser("gpt2")


def test_gpt2_bpe_dir_mismatched_files(gpt2_bpe_dir: Path, tmp_path: Path, monkeypatch):
    shutil.copy(gpt2_bpe_dir / "encoder.json", tmp_path / "encoder.json")
    lines = (gpt2_bpe_dir / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    (tmp_path / "vocab.bpe").write_text("\n".join(lines[:1] + lines[2:]), encoding="utf-8")
    monkeypatch.setenv("GPT2_BPE_DIR", str(tmp_path))
    with pytest.raises(TokeniserError, match="damaged or do not match"):
        get_tokeniser("gpt2")


def test_tokeniser_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv("GPT2_BPE_DIR", raising=False)
    opts = parse_options(TokeniserOptions, [], "x", "")
    assert opts.tokeniser == "gpt2"
    use_gpt2_bpe_dir(opts.gpt2_bpe_dir)
    assert "GPT2_BPE_DIR" not in os.environ
    argv = ["--tokeniser", "x.tkn", "--gpt2-bpe-dir", str(tmp_path)]
    opts = parse_options(TokeniserOptions, argv, "x", "")
    assert (opts.tokeniser, opts.gpt2_bpe_dir) == ("x.tkn", str(tmp_path))
    use_gpt2_bpe_dir(opts.gpt2_bpe_dir)
    assert os.environ["GPT2_BPE_DIR"] == str(tmp_path)


def test_unknown_spec():
    with pytest.raises(TokeniserError, match="unknown tokeniser"):
        get_tokeniser("gpt3")


# Our BPE: the merges -------------------------------------------------------------------------


def test_hand_worked_merges():
    """hug x10, pug x5, pun x12, bun x4, hugs x5 (one pre-token each). Pair counts:
    ug 10+5+5=20, un 12+4=16, pu 17, hu 15, gs 5 -> u+g. Then un 16, p+u 12 -> u+n.
    Then h+ug 15, p+un 12, p+ug 5, b+un 4, ug+s 5 -> h+ug. Then p+un 12 -> p+un."""
    docs = ["hug"] * 10 + ["pug"] * 5 + ["pun"] * 12 + ["bun"] * 4 + ["hugs"] * 5
    tok = GPTTokeniser.train(docs, vocab_size=256 + 4 + 1)
    u, g, n, h, p = (ord(c) for c in "ugnhp")
    assert tok.merges == [(u, g), (u, n), (h, 256), (p, 257)]
    assert [tok.token_bytes(i) for i in range(256, 260)] == [b"ug", b"un", b"hug", b"pun"]
    assert (tok.n_vocab, tok.eot_token) == (261, 260)
    assert tok.encode_ordinary("hugs pun") == [258, ord("s"), ord(" "), 259]


def test_pre_split_keeps_merges_inside_pieces():
    """' a' and 'a ' never merge across the GPT-4 split: pieces are ' a', ' a', ..."""
    tok = GPTTokeniser.train([" a" * 100], vocab_size=256 + 2 + 1)
    assert tok.merges == [(ord(" "), ord("a"))]
    assert tok.n_vocab == 256 + 1 + 1  # no second pair exists, so fewer ids than asked


def reference_merges(docs: Sequence[str], n_merges: int, pattern: str) -> list[tuple[int, int]]:
    """Plain BPE: count adjacent pairs over all pre-tokens, merge the most frequent, repeat.

    Ties go to the pair whose ids are smallest in the `tokenizers` trainer's numbering (bytes in
    the order of their byte-level characters, then merges in order), which is its rule."""
    words = Counter(p.encode() for d in docs for p in regex.findall(pattern, d))
    byte_char = bytes_to_unicode()
    order = [0] * 256
    for i, b in enumerate(sorted(range(256), key=lambda b: byte_char[b])):
        order[b] = i
    seqs = {w: list(w) for w in words}
    merges: list[tuple[int, int]] = []
    for new in range(256, 256 + n_merges):
        counts: Counter[tuple[int, int]] = Counter()
        for w, c in words.items():
            for pair in zip(seqs[w], seqs[w][1:], strict=False):
                counts[pair] += c
        best = max(counts, key=lambda p: (counts[p], -order[p[0]], -order[p[1]]))
        order.append(new)
        merges.append(best)
        for w, s in seqs.items():
            out, i = [], 0
            while i < len(s):
                if s[i : i + 2] == list(best):
                    out.append(new)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    return merges


@pytest.mark.parametrize("pattern", ["gpt4", "gpt2"])
def test_merges_equal_pure_python_bpe(shared_data: Path, pattern: str):
    docs = documents(corpus_text(shared_data, 30_000))
    ours = GPTTokeniser.train(docs, vocab_size=256 + 200 + 1, pattern=pattern)
    assert ours.merges == reference_merges(docs, 200, PATTERNS[pattern])


def hf_trained(docs: Sequence[str], vocab_size: int, pattern: str) -> object:
    """The `tokenizers` BpeTrainer's own tokenizer with our settings (specials left out)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    alphabet = list(bytes_to_unicode().values())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1, initial_alphabet=alphabet, show_progress=False
    )
    hf.train_from_iterator(docs, trainer=trainer)
    return hf


@pytest.mark.parametrize("pattern", ["gpt4", "gpt2"])
def test_same_tokens_as_tokenizers_trainer(shared_data: Path, train_docs, tok, pattern: str):
    """tiktoken applying our ranks gives exactly the `tokenizers` model's tokens (hence the
    same bytes per token) on held-out text and hard strings."""
    ours = tok if pattern == "gpt4" else GPTTokeniser.train(train_docs, 1000, pattern="gpt2")
    hf = hf_trained(train_docs, 1000, PATTERNS[pattern])
    held_out = (shared_data / "corpora" / "wikitext2_test.txt").read_text(encoding="utf-8")
    held_out = held_out[:200_000]
    char_byte = {c: b for b, c in bytes_to_unicode().items()}
    for text in [held_out, *HARD_STRINGS]:
        hf_tokens = [bytes(char_byte[c] for c in t) for t in hf.encode(text).tokens]
        our_ids = ours.encode_ordinary(text)
        assert [ours.token_bytes(i) for i in our_ids] == hf_tokens
    ratio = len(held_out.encode()) / len(ours.encode_ordinary(held_out))
    hf_ratio = len(held_out.encode()) / len(hf.encode(held_out).ids)
    assert ratio == pytest.approx(hf_ratio, rel=0.01)


def test_gpt4_pattern_splits_like_tiktoken_syntax():
    """Our GPT-4 pattern (`{1,3}` for `{1,3}+`) splits as tiktoken's cl100k_base pattern does."""
    cl100k = GPT4_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}{1,3}+")
    for text in HARD_STRINGS:
        assert regex.findall(GPT4_PATTERN, text) == regex.findall(cl100k, text)


def test_pattern_that_engines_split_differently_is_refused():
    with pytest.raises(TokeniserError, match="splits differently"):
        GPTTokeniser.train(["a 1234"], 300, pattern=r"\p{N}{1,3}+|\p{L}+|\s")
    with pytest.raises(TokeniserError, match="invalid pre-split pattern"):
        GPTTokeniser.train(["a"], 300, pattern="(")


def test_bad_training_settings_and_merges():
    with pytest.raises(TokeniserError, match="below 256"):
        GPTTokeniser.train(["a"], 256)
    with pytest.raises(TokeniserError, match="must include"):
        GPTTokeniser.train(["a"], 300, special_tokens=["<|pad|>"])
    with pytest.raises(TokeniserError, match="no repeats"):
        GPTTokeniser.train(["a"], 300, special_tokens=[ENDOFTEXT, ENDOFTEXT])
    with pytest.raises(TokeniserError, match="names a later id"):
        GPTTokeniser.from_merges([(97, 256)])
    with pytest.raises(TokeniserError, match="repeated tokens"):
        GPTTokeniser.from_merges([(97, 98), (97, 98)])


# Our BPE: the interface ----------------------------------------------------------------------


def test_ids_are_dense_and_specials_follow_merges(train_docs):
    tok = GPTTokeniser.train(train_docs[:200], 600, special_tokens=[ENDOFTEXT, "<|pad|>"])
    assert tok.n_vocab == 600
    assert tok.special_tokens == {ENDOFTEXT: 598, "<|pad|>": 599}
    assert tok.eot_token == 598
    tokens = [tok.token_bytes(i) for i in range(598)]
    assert len(set(tokens)) == 598
    assert tokens[:256] == [bytes([b]) for b in range(256)]


@pytest.mark.parametrize("text", HARD_STRINGS)
def test_round_trip_hard_strings(tok, text: str):
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode_ordinary_batch([text, text]) == [tok.encode_ordinary(text)] * 2


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_round_trip_any_text(tok, gpt2, text: str):
    assert tok.decode(tok.encode_ordinary(text)) == text
    assert gpt2.decode(gpt2.encode_ordinary(text)) == text


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=999), max_size=50))
def test_decode_any_ids_never_raises(tok, ids: list[int]):
    assert isinstance(tok.decode(ids), str)


def test_decoding_half_a_character_gives_replacement(tok):
    ids = tok.encode("😀")
    assert len(ids) > 1  # a 4-byte emoji is not one token in a 1000-id vocabulary
    assert "\ufffd" in tok.decode(ids[:1])
    assert tok.decode(ids) == "😀"


def test_special_token_text_is_refused_unless_allowed(tok, gpt2):
    text = f"one{ENDOFTEXT}two"
    for t in (tok, gpt2):
        with pytest.raises(ValueError, match="disallowed special token"):
            t.encode(text)
        ids = t.encode(text, allowed_special={ENDOFTEXT})
        assert ids.count(t.eot_token) == 1
        assert t.encode(text, allowed_special="all") == ids
        assert t.eot_token not in t.encode_ordinary(text)
        assert t.encode(text, disallowed_special=()) == t.encode_ordinary(text)
        assert t.decode(ids) == text


def test_save_load_round_trip(tok, tmp_path: Path, shared_data: Path):
    path = tmp_path / "t.tkn"
    tok.save(path)
    assert tok.spec == str(path.resolve())
    assert [p.name for p in tmp_path.iterdir()] == ["t.tkn"]
    loaded = get_tokeniser(str(path))
    assert isinstance(loaded, GPTTokeniser)
    assert (loaded.merges, loaded.pattern, loaded.special_tokens) == (
        tok.merges,
        tok.pattern,
        tok.special_tokens,
    )
    assert (loaded.fingerprint, loaded.n_vocab, loaded.eot_token) == (
        tok.fingerprint,
        tok.n_vocab,
        tok.eot_token,
    )
    assert get_tokeniser(loaded.spec).fingerprint == tok.fingerprint
    text = corpus_text(shared_data, 20_000)
    assert loaded.encode_ordinary(text) == tok.encode_ordinary(text)
    clone = pickle.loads(pickle.dumps(loaded))
    assert (clone.spec, clone.fingerprint) == (loaded.spec, loaded.fingerprint)
    assert clone.encode_ordinary(text) == tok.encode_ordinary(text)


def test_tkn_file_is_readable(tok, tmp_path: Path):
    path = tmp_path / "t.tkn"
    tok.save(path)
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[0] == "gpt-alpha-tkn 1"
    assert json.loads(lines[1].removeprefix("pattern ")) == GPT4_PATTERN
    assert lines[2:4] == ["specials 1", f'999 "{ENDOFTEXT}"']
    assert lines[4] == "merges 743"
    first = lines[5].split(" ", 3)
    a, b = tok.merges[0]
    assert first[:3] == ["256", str(a), str(b)]
    assert json.loads(first[3]) == (bytes([a]) + bytes([b])).decode()
    assert lines[-2] == f"fingerprint {tok.fingerprint}"


def test_fingerprint_depends_on_merges_pattern_and_specials(tok, train_docs):
    smaller = GPTTokeniser.from_merges(tok.merges[:-1])
    swapped = GPTTokeniser.from_merges(tok.merges, pattern="gpt2")
    other_specials = GPTTokeniser.from_merges(tok.merges, special_tokens=[ENDOFTEXT, "<|x|>"])
    same = GPTTokeniser.from_merges(tok.merges)
    fingerprints = {t.fingerprint for t in (tok, smaller, swapped, other_specials)}
    assert len(fingerprints) == 4
    assert same.fingerprint == tok.fingerprint


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda s: s.replace("gpt-alpha-tkn 1", "gpt-alpha-tkn 2", 1), "format version"),
        (lambda s: s[: len(s) // 2], "truncated|fields|expected"),
        (lambda s: s[: s.index("fingerprint")], "truncated"),
        (lambda s: "\x00garbage\xff" * 100, "not a gpt-alpha-tkn"),
        (lambda s: s.replace("\n300 ", "\n301 ", 1), "out of order"),
        (lambda s: s.replace("merges 743", "merges 742", 1), "must follow the merges"),
        (lambda s: s.replace("fingerprint ", "fingerprint 0", 1), "fingerprint does not match"),
        (lambda s: s + "extra\n", "after the fingerprint"),
        (lambda s: s.replace('999 "<|endoftext|>"', '998 "<|endoftext|>"'), "follow the merges"),
    ],
)
def test_damaged_tkn_files_are_refused(tok, tmp_path: Path, damage, message: str):
    good = tmp_path / "good.tkn"
    tok.save(good)
    bad = tmp_path / "bad.tkn"
    bad.write_text(damage(good.read_text(encoding="utf-8")), encoding="utf-8")
    with pytest.raises(TokeniserError, match=message) as info:
        GPTTokeniser(bad)
    assert str(bad) in str(info.value)


def test_undecodable_and_missing_tkn_files(tmp_path: Path):
    bad = tmp_path / "bin.tkn"
    bad.write_bytes(bytes(range(256)))
    with pytest.raises(TokeniserError, match="bin.tkn"):
        get_tokeniser(str(bad))
    with pytest.raises(TokeniserError, match="not found"):
        get_tokeniser(str(tmp_path / "missing.tkn"))


def test_merge_text_edit_is_caught(tok, tmp_path: Path):
    """A merge line whose readable text disagrees with its ids is refused."""
    path = tmp_path / "t.tkn"
    tok.save(path)
    lines = path.read_text(encoding="utf-8").split("\n")
    new, a, b, _ = lines[5].split(" ", 3)
    lines[5] = f'{new} {a} {b} "zz"'
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(TokeniserError, match="does not match its text"):
        GPTTokeniser(path)


# The script ----------------------------------------------------------------------------------


def run_script(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "tokeniser.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )


def test_script_help():
    pytest.importorskip("gpt.data.sources")
    result = run_script(["--help"])
    assert result.returncode == 0, result.stderr
    assert "--vocab-size" in result.stdout and "50257" in result.stdout


def test_script_trains_on_a_local_folder(tmp_path: Path, shared_data: Path):
    pytest.importorskip("gpt.data.sources")
    texts = tmp_path / "texts"
    texts.mkdir()
    for i, doc in enumerate(documents(corpus_text(shared_data, 100_000))[:60]):
        (texts / f"{i:03d}.txt").write_text(doc, encoding="utf-8")
    out = tmp_path / "small.tkn"
    args = ["--source", str(texts), "--docs", "50", "--vocab-size", "400", "--out", str(out)]
    result = run_script([*args, "--pattern", "gpt2"])
    assert result.returncode == 0, result.stderr
    tok = get_tokeniser(str(out))
    assert (tok.n_vocab, tok.eot_token, tok.pattern) == (400, 399, GPT2_PATTERN)


@pytest.mark.parametrize(
    "args", [["--vocab-size", "100"], ["--docs", "0"], ["--out", "x.json"], ["--pattern", "gpt5"]]
)
def test_script_bad_input_is_one_line(args: list[str]):
    pytest.importorskip("gpt.data.sources")
    result = run_script(args)
    assert result.returncode == 2
    assert "error:" in result.stderr
    assert "Traceback" not in result.stderr
