"""HellaSwag scoring: packing layout, agreement with an independent transformers computation on
real items (our checkpoints and Hugging Face models), metrics, data handling, CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import hellaswag as hellaswag_cli  # the command at the project root
from gpt.checkpoint import save_model_dir
from gpt.cli import run
from gpt.config import GPTConfig
from gpt.hellaswag import data as hd
from gpt.hellaswag import score as hs
from gpt.hf import load_model
from gpt.model.gpt2 import GPT

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """These models are tiny: one thread beats two on a busy machine by far."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _item(ctx: list[int], endings: list[list[int]]) -> hs.Encoded:
    return hs.Encoded(ctx, endings)


def _write_jsonl(path: Path, examples: list[dict]) -> Path:
    path.write_text("".join(json.dumps(ex) + "\n" for ex in examples))
    return path


def _random_items(rng: np.random.Generator, n: int, vocab: int) -> list[hs.Encoded]:
    return [
        _item(
            rng.integers(0, vocab, int(rng.integers(1, 12))).tolist(),
            [rng.integers(0, vocab, int(rng.integers(1, 9))).tolist() for _ in range(4)],
        )
        for _ in range(n)
    ]


def _reference_ll(model: GPT, items: list[hs.Encoded]) -> np.ndarray:
    """Plain GPT.forward on each `ctx + ending` alone, float64 log-softmax."""
    out = np.zeros((len(items), 4))
    for i, it in enumerate(items):
        for k, end in enumerate(it.endings):
            ids = torch.tensor([it.ctx + end])
            logp = torch.log_softmax(model(ids)[0][0].double(), -1)
            n = len(it.ctx)
            out[i, k] = sum(logp[n - 1 + j, t].item() for j, t in enumerate(end))
    return out


# ----------------------------------------------------------------------------- packing


def test_pack_rows_first_fit_decreasing() -> None:
    assert hs.pack_rows([5, 3, 4, 2], capacity=7) == [[0, 3], [2, 1]]
    assert hs.pack_rows([8], capacity=7) == [[0]]  # an item longer than a row gets its own
    rows = hs.pack_rows([3, 3, 3, 3, 1], capacity=6)
    assert sorted(i for r in rows for i in r) == [0, 1, 2, 3, 4]
    assert len(rows) == 3


def test_packed_layout_hand_worked() -> None:
    """ctx [10, 11], endings [20], [21, 22], [23], [24]: one row of 7 tokens."""
    b = hs.build_packed_batch([_item([10, 11], [[20], [21, 22], [23], [24]])], capacity=16)
    assert b.idx.tolist() == [[10, 11, 20, 21, 22, 23, 24]]
    assert b.pos.tolist() == [[0, 1, 2, 2, 3, 2, 2]]  # every ending restarts after the context
    m = b.mask[0].int().tolist()
    assert m[1] == [1, 1, 0, 0, 0, 0, 0]  # context: causal
    assert m[2] == [1, 1, 1, 0, 0, 0, 0]  # ending 0 sees the context and itself
    assert m[4] == [1, 1, 0, 1, 1, 0, 0]  # ending 1's second token: context + ending 1 only
    assert m[6] == [1, 1, 0, 0, 0, 0, 1]
    # logits at position 1 (last context token) predict every ending's first token
    assert b.src.tolist() == [1, 1, 3, 1, 1]
    assert b.tgt.tolist() == [20, 21, 22, 23, 24]
    assert b.owner.tolist() == [0, 1, 1, 2, 3]


@pytest.mark.parametrize("capacity", [1, 24, 256])
def test_packed_scores_match_one_sequence_at_a_time(tiny_config: GPTConfig, capacity: int) -> None:
    """Several items per row (or one per row), padding included, equal plain forwards."""
    torch.manual_seed(0)
    model = GPT(tiny_config).double().eval()
    items = _random_items(np.random.default_rng(capacity), 9, tiny_config.vocab_size)
    b = hs.build_packed_batch(items, capacity=capacity)
    assert b.idx.shape[0] == (9 if capacity == 1 else b.idx.shape[0])
    with torch.no_grad():
        hidden = model.hidden(b.idx, positions=b.pos, mask=b.mask)
        logits = model.lm_head(hidden.flatten(0, 1)[b.src])[:, : tiny_config.vocab_size]
        got = hs._log_likelihoods(logits, b.tgt, b.owner, len(items)).numpy()
        ref = _reference_ll(model, items)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9)


def test_score_items_orders_and_seed_method_agrees(tiny_config: GPTConfig) -> None:
    torch.manual_seed(1)
    model = GPT(tiny_config).double().eval()
    items = _random_items(np.random.default_rng(7), 11, tiny_config.vocab_size)
    packed = hs.score_items(model, items, hs.score_packed_batch, device=CPU, batch_size=4)
    seed = hs.score_items(model, items, hs.score_seed_batch, device=CPU, batch_size=1)
    np.testing.assert_allclose(packed, _reference_ll(model, items), atol=1e-9)
    np.testing.assert_allclose(seed, packed, atol=1e-9)


def test_encode_truncates_context_on_the_left() -> None:
    def encode(texts: list[str]) -> list[list[int]]:
        return [[len(w) for w in t.split()] for t in texts]

    ex = {"ctx": "a bb ccc dddd eeeee", "endings": ["x", "yy zz", "x", "x"], "label": 0}
    [it] = hs.encode_examples([ex], encode, max_len=5)
    assert it.endings == [[1], [2, 2], [1], [1]]
    assert it.ctx == [3, 4, 5] and it.cut  # 3 + longest ending (2) = 5 positions
    [whole] = hs.encode_examples([ex], encode, max_len=7)
    assert whole.ctx == [1, 2, 3, 4, 5] and not whole.cut
    [empty] = hs.encode_examples([{**ex, "ctx": ""}], encode, max_len=5, empty_ctx=99)
    assert empty.ctx == [99] and not empty.cut
    # an ending longer than max_len - 1 keeps its last tokens, after the context's last token
    [short] = hs.encode_examples([ex], encode, max_len=2)
    assert (short.ctx, short.endings, short.cut) == ([5], [[1], [2], [1], [1]], True)


def _ids(texts: list[str]) -> list[list[int]]:
    """A "tokeniser" of space-separated token ids, so that tests choose the tokens."""
    return [[int(w) for w in t.split()] for t in texts]


def test_items_longer_than_the_context_score_as_their_cut_sequence(tiny_config: GPTConfig) -> None:
    """Items longer than the tiny model's 64 positions, some with an ending of 64+ tokens: the
    packed scores equal plain forward passes on the cut sequences, written out here by the rule
    (endings keep their last 63 tokens, the context the last tokens beside the longest ending)."""
    torch.manual_seed(0)
    model = GPT(tiny_config).double().eval()
    S = tiny_config.block_size
    rng = np.random.default_rng(5)

    def text(n: int) -> str:
        return " ".join(map(str, rng.integers(1, tiny_config.vocab_size, n)))

    examples = [
        {"ctx": text(int(rng.integers(1, 90))), "endings": [text(k) for k in sizes], "label": 0}
        for sizes in ([3, 5, 1, 2], [10, 30, 20, 5], [70, 2, 4, 9], [1, 1, 1, 100], [2, 2, 2, 2])
        for _ in range(2)
    ]
    items = hs.encode_examples(examples, lambda t: [[0, *ids] for ids in _ids(t)], S)
    expected = []
    for ex in examples:
        ctx, ends = [0, *_ids([ex["ctx"]])[0]], [[0, *e] for e in _ids(ex["endings"])]
        kept = [e[-(S - 1) :] for e in ends]
        room = S - max(map(len, kept))
        cut = len(ctx) + max(map(len, ends)) > S
        expected.append(hs.Encoded(ctx[-room:], kept, cut))
    assert items == expected
    assert 0 < sum(it.cut for it in items) < len(items)
    got = hs.score_items(model, items, hs.score_packed_batch, device=CPU, batch_size=3)
    np.testing.assert_allclose(got, _reference_ll(model, expected), rtol=0, atol=1e-9)


def test_predictions_hand_worked() -> None:
    """acc: total; acc_norm: per token; acc_norm_bytes: per byte of the ending text."""
    examples = [{"ctx": "c", "endings": ["a", "b" * 8, "c" * 6, "d" * 20], "label": 2}]
    items = [_item([1], [[1], [1] * 2, [1] * 6, [1] * 4])]
    ll = np.array([[-2.0, -3.0, -6.0, -5.0]])
    p = hs.predictions(examples, items, ll)
    assert p["acc"][0] == 0  # -2 is the highest total
    assert p["acc_norm"][0] == 2  # per token: -2, -1.5, -1, -1.25
    assert p["acc_norm_bytes"][0] == 3  # per byte: -2, -0.375, -1, -0.25
    s = hs.summarise(examples, items, ll)
    assert (s["n"], s["acc"], s["acc_norm"], s["acc_norm_bytes"]) == (1, 0.0, 1.0, 0.0)
    assert s["predictions"][0]["pred_acc_norm_bytes"] == 3


# ----------------------------------------------------------------------------- vs transformers


def _hf_to_ours(hf_dir: Path) -> GPT:
    """Our GPT with the weights of a transformers GPT2LMHeadModel (Conv1D weights transposed)."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(hf_dir)
    c = hf.config
    ours = GPT(
        GPTConfig(
            block_size=c.n_positions,
            vocab_size=c.vocab_size,
            n_layer=c.n_layer,
            n_head=c.n_head,
            n_embd=c.n_embd,
        )
    )
    src = hf.state_dict()
    transposed = (
        "attn.c_attn.weight",
        "attn.c_proj.weight",
        "mlp.c_fc.weight",
        "mlp.c_proj.weight",
    )
    with torch.no_grad():
        for name, p in ours.state_dict().items():
            w = src[name]
            p.copy_(w.t() if name.endswith(transposed) else w)
    return ours


@pytest.fixture(scope="module")
def real_items(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 12 real val items plus the 4 longest of the first 1,000 (their contexts get
    truncated at the test model's 128 positions)."""
    lines = (shared_data / "hellaswag" / "hellaswag_val.jsonl").read_text().splitlines()[:1000]
    examples = [json.loads(x) for x in lines]
    longest = sorted(examples[12:], key=lambda e: -len(e["ctx"]) - max(map(len, e["endings"])))
    return _write_jsonl(tmp_path_factory.mktemp("hs") / "items.jsonl", examples[:12] + longest[:4])


def _transformers_reference(hf_dir: Path, examples: list[dict]) -> np.ndarray:
    """Independent: the transformers model and tokenizer, one `ctx + " " + ending` at a time."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    tok = AutoTokenizer.from_pretrained(hf_dir)
    out = np.zeros((len(examples), 4))
    for i, ex in enumerate(examples):
        ends = [tok.encode(" " + e) for e in ex["endings"]]
        ctx = tok.encode(ex["ctx"])[-(model.config.n_positions - max(map(len, ends))) :]
        for k, end in enumerate(ends):
            with torch.no_grad():
                logits = model(torch.tensor([ctx + end])).logits[0]
            logp = torch.log_softmax(logits.double(), -1)
            out[i, k] = sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(end))
    return out


@pytest.fixture(scope="module")
def reference_ll(tiny_hf_gpt2_dir: Path, real_items: Path) -> np.ndarray:
    return _transformers_reference(tiny_hf_gpt2_dir, hd.load_examples(real_items))


def _check_results(result: dict, examples: list[dict], ref: np.ndarray) -> None:
    got = np.array([p["loglik"] for p in result["predictions"]])
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-4)  # float32 sums of ~100s
    labels = np.array([ex["label"] for ex in examples])
    n_tokens = np.array([p["ending_tokens"] for p in result["predictions"]])
    n_bytes = np.array([[len(e) for e in ex["endings"]] for ex in examples])
    for metric, score in (
        ("acc", ref),
        ("acc_norm", ref / n_tokens),
        ("acc_norm_bytes", ref / n_bytes),
    ):
        top2 = np.sort(score, 1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 1e-3  # ignore near-ties
        assert clear.sum() >= len(examples) - 2
        preds = np.array([p[f"pred_{metric}"] for p in result["predictions"]])
        np.testing.assert_array_equal(preds[clear], score.argmax(1)[clear])
        assert result[metric] == pytest.approx((preds == labels).mean())
    assert result["n"] == len(examples)


def _run_main(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        run(hellaswag_cli.main, argv)
    assert e.value.code == 0


def test_hf_model_matches_transformers(
    tiny_hf_gpt2_dir: Path, real_items: Path, tmp_path: Path
) -> None:
    out = tmp_path / "r.json"
    _run_main(
        [
            "-m",
            str(tiny_hf_gpt2_dir),
            "--data",
            str(real_items),
            "--batch-size",
            "3",
            "--device",
            "cpu",
            "--output",
            str(out),
        ]
    )
    examples = hd.load_examples(real_items)
    _check_results(
        json.loads(out.read_text()), examples, _transformers_reference(tiny_hf_gpt2_dir, examples)
    )


def test_our_checkpoint_matches_transformers(
    tiny_hf_gpt2_dir: Path, real_items: Path, reference_ll: np.ndarray, tmp_path: Path
) -> None:
    from gpt.data.tokeniser import get_tokeniser

    tok = get_tokeniser("gpt2")
    ckpt = save_model_dir(_hf_to_ours(tiny_hf_gpt2_dir), tmp_path / "ckpt", "gpt2", tok.fingerprint)
    examples = hd.load_examples(real_items)
    for flags in (["--batch-size", "5"], ["--seed-method"]):
        out = tmp_path / "r.json"
        _run_main(["-m", str(ckpt), "--data", str(real_items), "--output", str(out), *flags])
        result = json.loads(out.read_text())
        _check_results(result, examples, reference_ll)
    # evaluate(), what the trainer calls, agrees with the command
    metrics = hs.evaluate(_hf_to_ours(tiny_hf_gpt2_dir), tok, examples, batch_size=4)
    assert metrics == pytest.approx({k: result[k] for k in ("n", *hs.METRICS, "cut")})


def test_hf_bos_follows_the_tokenizer(tiny_hf_gpt2_dir: Path, tmp_path: Path) -> None:
    """Contexts start with BOS exactly when the tokenizer's default encoding adds it (OPT,
    Llama); endings never get it."""
    import shutil

    from transformers import AutoTokenizer

    bos_dir = tmp_path / "bos"
    shutil.copytree(tiny_hf_gpt2_dir, bos_dir)
    AutoTokenizer.from_pretrained(tiny_hf_gpt2_dir, add_bos_token=True).save_pretrained(bos_dir)
    ex = [{"ctx": "A man", "endings": ["runs.", "sits.", "eats.", "jumps."], "label": 0}]
    for folder, prefix in ((tiny_hf_gpt2_dir, []), (bos_dir, [50256])):
        lm = load_model(str(folder), CPU, torch.float32, any_causal_lm=True)
        assert lm.prefix == prefix and lm.max_len == 128
        [it] = hs.encode_examples(ex, lm.encode_batch, lm.max_len, lm.prefix, lm.empty_ctx)
        assert it.ctx == [*prefix, 32, 582]  # "A", " man"
        assert it.endings[0] == [4539, 13]  # " runs", "."


# ----------------------------------------------------------------------------- evaluate()


class _Wrapper(nn.Module):
    """Stands for DDP: the model under `.module`."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


class _FakeTokeniser:
    """Maps characters to ids below the tiny vocabulary."""

    eot_token = 0

    def encode_ordinary_batch(self, texts: list[str]) -> list[list[int]]:
        return [[1 + ord(ch) % 500 for ch in t] for t in texts]


def _fake_examples(n: int) -> list[dict]:
    rng = np.random.default_rng(3)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "ran"]
    return [
        {
            "ctx": " ".join(rng.choice(words, 6)),
            "endings": [" ".join(rng.choice(words, int(rng.integers(1, 4)))) for _ in range(4)],
            "label": int(rng.integers(0, 4)),
        }
        for _ in range(n)
    ]


def test_evaluate_unwraps_a_wrapped_model(tiny_config: GPTConfig) -> None:
    torch.manual_seed(0)
    model = GPT(tiny_config).eval()
    examples = _fake_examples(13)
    full = hs.evaluate(_Wrapper(model), _FakeTokeniser(), examples, batch_size=4)
    items = hs.encode_examples(examples, _FakeTokeniser().encode_ordinary_batch, 64)
    expected = hs.summarise(examples, items, _reference_ll(model, items))
    assert full == pytest.approx({k: expected[k] for k in ("n", *hs.METRICS, "cut")})
    with pytest.raises(TypeError, match="one of our models"):
        hs.evaluate(nn.Linear(2, 2), _FakeTokeniser(), examples)


def _rank_main(rank: int, init_file: str, cfg: dict, state: dict, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    model = GPT(GPTConfig.from_dict(cfg)).eval()
    model.load_state_dict(state)
    r = hs.evaluate(model, _FakeTokeniser(), _fake_examples(13), rank=rank, world_size=2)
    Path(out_dir, f"{rank}.json").write_text(json.dumps(r))
    dist.destroy_process_group()


@pytest.mark.distributed
def test_evaluate_all_reduces_over_two_ranks(tiny_config: GPTConfig, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = GPT(tiny_config).eval()
    single = hs.evaluate(model, _FakeTokeniser(), _fake_examples(13))
    torch.multiprocessing.spawn(
        _rank_main,
        args=(str(tmp_path / "init"), tiny_config.to_dict(), model.state_dict(), str(tmp_path)),
        nprocs=2,
    )
    for rank in (0, 1):
        assert json.loads((tmp_path / f"{rank}.json").read_text()) == pytest.approx(single)


# ----------------------------------------------------------------------------- data


def test_load_examples_validates(tmp_path: Path) -> None:
    good = {"ctx": "c", "endings": ["a", "b", "c", "d"], "label": "2", "ind": 7}
    path = _write_jsonl(tmp_path / "ok.jsonl", [good, {**good, "label": 1}])
    exs = hd.load_examples(path)
    assert [e["label"] for e in exs] == [2, 1] and exs[0]["ind"] == 7
    assert len(hd.load_examples(path, limit=1)) == 1
    for bad, match in (
        ({**good, "endings": ["a", "b"]}, "endings"),
        ({**good, "label": 4}, "label"),
        ({"endings": good["endings"], "label": 0}, "ctx"),
    ):
        with pytest.raises(hd.HellaSwagError, match=f"bad.jsonl:2: .*{match}"):
            hd.load_examples(_write_jsonl(tmp_path / "bad.jsonl", [good, bad]))
    (tmp_path / "junk.jsonl").write_text("{nope\n")
    with pytest.raises(hd.HellaSwagError, match="junk.jsonl:1: not JSON"):
        hd.load_examples(tmp_path / "junk.jsonl")
    with pytest.raises(hd.HellaSwagError, match="no such HellaSwag file"):
        hd.load_examples(tmp_path / "missing.jsonl")


def test_find_file_and_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HELLASWAG_FILE", raising=False)
    monkeypatch.setenv("HELLASWAG_DIR", str(tmp_path / "cache"))
    assert hd.find_hellaswag_file() is None
    assert hd.find_hellaswag_file(str(tmp_path / "nope.jsonl")) is None
    src = _write_jsonl(tmp_path / "src_val.jsonl", _fake_examples(2))
    monkeypatch.setenv("HELLASWAG_FILE", str(src))
    assert hd.find_hellaswag_file() == src
    monkeypatch.delenv("HELLASWAG_FILE")
    # a download (from a file:// URL here) lands in the cache, with no temp file left behind
    monkeypatch.setattr(hd, "HELLASWAG_URL", f"file://{tmp_path}/src_{{split}}.jsonl")
    monkeypatch.setitem(hd.SPLIT_FILES, "val", hd.SplitFile(2, None))  # the stand-in's count
    got = hd.download_split("val")
    assert got == tmp_path / "cache" / "hellaswag_val.jsonl"
    assert got.read_bytes() == src.read_bytes()
    assert os.listdir(tmp_path / "cache") == ["hellaswag_val.jsonl"]
    assert hd.find_hellaswag_file() == got


def test_offline_error_names_file_and_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("HELLASWAG_FILE", raising=False)
    monkeypatch.setenv("HELLASWAG_DIR", str(tmp_path))
    monkeypatch.setattr(hd, "HELLASWAG_URL", "http://127.0.0.1:9/hellaswag_{split}.jsonl")
    with pytest.raises(SystemExit) as e:
        run(hellaswag_cli.main, ["-m", "gpt2"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot download") and "\n" not in err
    assert str(tmp_path / "hellaswag_val.jsonl") in err and "--data" in err
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- during training


def test_training_offline_skips_hellaswag_at_once(
    tiny_run_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """--hellaswag auto with no file and no network (a closed local port): one line, and the
    run goes on at once."""
    from gpt.train.loop import train

    monkeypatch.delenv("HELLASWAG_FILE", raising=False)
    monkeypatch.setenv("HELLASWAG_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(hd, "HELLASWAG_URL", "http://127.0.0.1:9/hellaswag_{split}.jsonl")
    train(tiny_run_config(hellaswag="auto", max_steps=1, samples=0, save_every=0))
    skipped = [x for x in capsys.readouterr().out.splitlines() if x.startswith("hellaswag:")]
    assert len(skipped) == 1 and "skipped" in skipped[0] and "127.0.0.1:9" in skipped[0]
    assert not (tmp_path / "run" / "metrics.jsonl").read_text().count('"hella"')


def test_training_with_a_short_context_scores_cut_items(
    shared_data: Path, tiny_train_data: Path, tmp_path: Path
) -> None:
    """`--model tiny` (64 positions) with a 512-token BPE, the first 20 real items: some are
    longer than the context; the run completes and logs HellaSwag with how many were cut."""
    from gpt.data.tokeniser import get_tokeniser

    hellaswag = shared_data / "hellaswag" / "hellaswag_val.jsonl"
    tkn = tiny_train_data / "tokeniser.tkn"
    cmd = [sys.executable, str(ROOT / "train.py"), "--preset=tiny", f"--data={tiny_train_data}"]
    cmd += [f"--tokeniser={tkn}", "--out=run", "--max-steps=2", "--eval-every=2", "--samples=0"]
    cmd += [f"--hellaswag={hellaswag}", "--hellaswag-limit=20", "--no-plot", "--no-export"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    hella = [e for e in map(json.loads, lines) if e["kind"] == "hella"]
    # the items that do not fit, counted here from their token lengths
    tok = get_tokeniser(str(tkn))
    examples = hd.load_examples(hellaswag, limit=20)
    ctxs = tok.encode_ordinary_batch([ex["ctx"] for ex in examples])
    longest = [max(len(tok.encode_ordinary(" " + e)) for e in ex["endings"]) for ex in examples]
    too_long = sum(len(c) + e > 64 for c, e in zip(ctxs, longest, strict=True))
    assert too_long > 0
    assert [(e["step"], e["n"], e["cut"]) for e in hella] == [(0, 20, too_long), (2, 20, too_long)]
    assert f"({too_long} of 20 cut to fit the context)" in r.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["-m", "x", "--data", "/nonexistent/h.jsonl"],
        ["-m", "x", "--data", "{data}", "--limit", "0"],
        ["-m", "{tmp}", "--data", "{data}"],  # a folder that is no model
        ["-m", "{tmp}/no/such/dir", "--data", "{data}"],
        ["-m", "no-such-org/no-such-model", "--data", "{data}"],  # offline hub
        ["-m", "x", "--data", "{data}", "--device", "warp-drive"],
    ],
)
def test_cli_bad_input(args: list[str], tmp_path: Path) -> None:
    data = _write_jsonl(tmp_path / "d.jsonl", _fake_examples(2))
    argv = [a.format(data=data, tmp=tmp_path) for a in args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    r = subprocess.run(
        [sys.executable, "hellaswag.py", *argv], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
