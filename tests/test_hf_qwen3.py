"""Hugging Face export and import of the Qwen3 family (gpt/hf_qwen3.py through gpt/hf.py) against
transformers' own Qwen3ForCausalLM: logits, greedy decoding over the KV cache, bit-exact
round trips, the model card, refused variants, and lm-eval's HFLM on an export.

    python -m pytest tests/test_hf_qwen3.py
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gpt.checkpoint import save_model_dir
from gpt.config import model_preset, train_preset
from gpt.data.tokeniser import GPTTokeniser, get_tokeniser
from gpt.finish import finish_run
from gpt.hf import from_pretrained, load_model, main, save_pretrained
from gpt.hf_card import RunFacts, model_card
from gpt.hf_hub import UnsupportedModelError
from gpt.model.base import LanguageModel
from gpt.model.families import build_model
from gpt.model.generate import generate
from gpt.model.qwen3 import Qwen3
from gpt.train.loop import train
from tests.test_trainer import write_hellaswag

transformers = pytest.importorskip("transformers")

VOCAB = 500  # padded to 512 rows (pad_vocab_multiple 64): the export drops 12 rows per table
PADDED_KEYS = ("model.embed_tokens.weight", "lm_head.weight")
# float32 parity: eps 1.2e-7 per rounding; a logit is a dot product over C = 32 after two blocks
# whose matmuls accumulate over at most 128 (attention: 64 keys x hs 8 per head; MLP: 128 wide)
# terms of O(1) values, and both sides round in different orders (SDPA vs eager attention,
# fused rms_norm vs transformers' manual one): ~1e2 * 1.2e-7 * |logit| ~ 1e-5 at logits of O(1),
# observed ~1e-6. A wrong weight, rotary pairing or norm moves logits by 1e-2 or more.
ATOL = 1e-5


@pytest.fixture(scope="module")
def tokeniser_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    docs = ["The quick brown fox jumps over the lazy dog. 1234 + 5678 = 6912!"] * 20
    docs += ["Ünïcödé naïve café, déjà vu; ?!  spaces\n\ttabs\n"] * 20
    path = tmp_path_factory.mktemp("tok") / "small.tkn"
    GPTTokeniser.train(docs, vocab_size=300).save(path)
    return path


def random_qwen3(tied: bool, seed: int = 0, head_size: int | None = None) -> Qwen3:
    """modern-tiny (grouped-query attention: 4 query heads over 2 key/value heads) with random
    weights everywhere: the zero-initialised projections and head, and norm gains off one;
    head_size decouples the heads from the width (32) as Qwen3's released models do."""
    torch.manual_seed(seed)
    config = model_preset(
        "modern-tiny",
        vocab_size=VOCAB,
        pad_vocab_multiple=64,
        tie_embeddings=tied,
        head_size=head_size,
    )
    model = build_model(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.3)
    assert isinstance(model, Qwen3)
    return model.eval()


def export(model: LanguageModel, tokeniser_file: Path, tmp_path: Path) -> Path:
    """The model saved as one of our checkpoints, exported by the real command."""
    save_model_dir(model, tmp_path / "ckpt", tokeniser_spec=str(tokeniser_file))
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "out")]) == 0
    return tmp_path / "out"


def hf_model(out: Path) -> transformers.PreTrainedModel:
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert type(hf).__name__ == "Qwen3ForCausalLM"
    return hf.eval()


@pytest.mark.parametrize(
    ("tied", "head_size"),
    [(False, None), (True, None), (False, 16)],
    ids=["untied", "tied", "decoupled-heads"],  # 4 heads of 16 on a width of 32
)
def test_transformers_logits_and_greedy_decoding_match(
    tied: bool, head_size: int | None, tokeniser_file: Path, tmp_path: Path
) -> None:
    model = random_qwen3(tied, head_size=head_size)
    out = export(model, tokeniser_file, tmp_path)
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == VOCAB and config["num_key_value_heads"] == 2
    assert config["head_dim"] == (head_size or 8)
    assert config["tie_word_embeddings"] is tied
    hf = hf_model(out)
    assert hf.config.rope_parameters["rope_theta"] == model.config.rope_theta
    if tied:
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    idx = torch.randint(0, VOCAB, (2, model.config.block_size), generator=torch.Generator())
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf(idx).logits
    assert ours is not None and ours.abs().max() > 1  # logits that differ clearly
    diff = (ours - theirs).abs().max().item()
    print(f"max abs logit difference ({'tied' if tied else 'untied'}): {diff:.2e}")
    torch.testing.assert_close(theirs, ours, rtol=0, atol=ATOL)

    prompt = idx[:1, :7]
    new = 40  # positions 7..46 continue across the cache
    ours_seq = generate(model, prompt, new, temperature=0)
    hf.generation_config.eos_token_id = None  # ours runs without an end token as well
    hf_seq = hf.generate(prompt, max_new_tokens=new, do_sample=False, use_cache=True)
    assert hf_seq.shape == (1, 7 + new)
    assert hf_seq.tolist() == ours_seq.tolist()
    assert len(set(ours_seq[0, 7:].tolist())) > 1  # not one token repeated


@pytest.mark.parametrize("head_size", [None, 16], ids=["heads-of-width/n_head", "decoupled"])
def test_import_is_exact_and_round_trip_byte_identical(
    head_size: int | None, tokeniser_file: Path, tmp_path: Path
) -> None:
    model = random_qwen3(tied=False, seed=1, head_size=head_size)
    out = export(model, tokeniser_file, tmp_path)
    lm = load_model(str(out), torch.device("cpu"))
    imported = lm.model
    assert isinstance(imported, Qwen3) and lm.tokeniser is not None
    assert lm.tokeniser.fingerprint == get_tokeniser(str(tokeniser_file)).fingerprint
    ours, theirs = model.state_dict(), imported.state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        expected = value[:VOCAB] if key in PADDED_KEYS else value  # padded rows are dropped
        assert torch.equal(theirs[key], expected), key
    again = save_pretrained(imported, tmp_path / "again", lm.tokeniser)
    for name in ("model.safetensors", "config.json"):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name


def test_tied_head_stored_in_the_weights_imports(tokeniser_file: Path, tmp_path: Path) -> None:
    """A tied checkpoint that also stores lm_head.weight (as some hub uploads do) imports, the
    head tied again; one whose stored head differs from the embedding is refused."""
    out = export(random_qwen3(tied=True, seed=2), tokeniser_file, tmp_path)
    weights = load_file(out / "model.safetensors")
    assert "lm_head.weight" not in weights
    embedding = weights["model.embed_tokens.weight"]
    save_file({**weights, "lm_head.weight": embedding.clone()}, out / "model.safetensors")
    model = from_pretrained(out)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.model.embed_tokens.weight, embedding)
    save_file({**weights, "lm_head.weight": embedding + 1}, out / "model.safetensors")
    with pytest.raises(UnsupportedModelError, match="lm_head.weight differs"):
        from_pretrained(out)


def test_card_names_family_kv_heads_and_parameters(tokeniser_file: Path, tmp_path: Path) -> None:
    out = export(random_qwen3(tied=False), tokeniser_file, tmp_path)
    card = (out / "README.md").read_text()
    head, body = card.removeprefix("---\n").split("\n---\n", 1)
    assert "- qwen3" in head and "library_name: transformers" in head
    assert "Qwen3 layout, 2 layers, 4 heads, 2 key/value heads (grouped-query)" in body
    assert "MLP width 128, lm_head untied" in body and "`Qwen3ForCausalLM`" in body
    assert f"Parameters: {hf_model(out).num_parameters():,}" in body  # the export's count
    decoupled = export(random_qwen3(tied=False, head_size=16), tokeniser_file, tmp_path / "d")
    assert "2 layers, 4 heads of 16, 2 key/value heads" in (decoupled / "README.md").read_text()


def test_card_gives_run_facts_and_hellaswag_when_measured() -> None:
    model = random_qwen3(tied=True)
    config = {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]}
    settings = {**train_preset("tiny").to_dict(), "model": "modern-tiny", "max_steps": 6}
    facts = RunFacts(settings, 1, "python-docs", 6, 768, 5.94321, hellaswag=0.25)
    body = model_card(model, config, None, facts)
    assert "lm_head tied to the token embedding" in body
    assert "- Validation loss: 5.9432" in body and "- HellaSwag (acc_norm): 0.2500" in body
    assert "python train.py --preset tiny --model modern-tiny --max-steps 6" in body
    no_hellaswag = model_card(model, config, None, dataclasses.replace(facts, hellaswag=None))
    assert "HellaSwag" not in no_hellaswag


def test_run_export_card_has_hellaswag_and_commands(tiny_run_config, tmp_path: Path) -> None:
    hella = write_hellaswag(tmp_path / "hellaswag.jsonl", 4)
    cfg = tiny_run_config(
        model="modern-tiny", max_steps=5, samples=0, hellaswag=str(hella), export=True
    )
    result = finish_run(train(cfg), cfg, say=lambda _: None)
    assert result.export_dir is not None
    body = (result.export_dir / "README.md").read_text()
    assert "Qwen3 layout" in body and "HellaSwag (acc_norm): " in body
    train_line = next(line for line in body.splitlines() if line.startswith("python train.py"))
    assert "--preset tiny " in train_line and "--model modern-tiny " in train_line
    assert "prepared by other code than fineweb.py" in body  # the test data's source: documents
    assert hf_model(result.export_dir).num_parameters() > 0
    again = tmp_path / "again"  # the export command on the checkpoint reads the same run facts
    assert main(["export", str(result.best_checkpoint), str(again)]) == 0
    assert "HellaSwag (acc_norm): " in (again / "README.md").read_text()


@pytest.mark.parametrize(
    "change",
    [
        {"attention_bias": True},
        {"use_sliding_window": True, "sliding_window": 16},
        {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}},
        {"hidden_act": "gelu"},
    ],
    ids=["bias", "sliding", "rope-scaling", "activation"],
)
def test_unsupported_variant_is_refused(change: dict, tokeniser_file: Path, tmp_path: Path) -> None:
    out = export(random_qwen3(tied=False), tokeniser_file, tmp_path)
    variant = tmp_path / "variant"
    shutil.copytree(out, variant)
    config = json.loads((variant / "config.json").read_text())
    (variant / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(UnsupportedModelError, match="unsupported Qwen3 variant") as e:
        load_model(str(variant), torch.device("cpu"))
    assert str(variant / "config.json") in str(e.value) and "\n" not in str(e.value)


def test_a_checkpoint_made_by_transformers_imports(tmp_path: Path) -> None:
    """A Qwen3ForCausalLM that transformers built and saved itself, shaped like the released
    models (heads of 128 decoupled from a width of 64, grouped key/value heads, a tied head,
    rope base 1e6, no head_dim default to lean on), loads into ours with the same logits."""
    torch.manual_seed(0)
    hf_config = transformers.Qwen3Config(
        vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=128, max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6}, tie_word_embeddings=True,
    )  # fmt: skip
    hf = transformers.Qwen3ForCausalLM(hf_config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():  # norm gains off one, as in random_qwen3
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
    hf.save_pretrained(tmp_path / "hf")
    ours = from_pretrained(tmp_path / "hf")
    assert isinstance(ours, Qwen3) and ours.config.head_dim == 128 and ours.config.tied
    idx = torch.randint(0, 300, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        mine, _ = ours(idx)
        theirs = hf(idx).logits
    # the same float32 bound as ATOL, attention summing over hs 128 instead of 8: still far
    # below the 1e-2 a wrong head layout gives
    torch.testing.assert_close(theirs, mine, rtol=0, atol=ATOL)


def test_lm_eval_hflm_scores_the_export(tokeniser_file: Path, tmp_path: Path) -> None:
    """lm-eval's HFLM (what eval/run_eval.sh runs) loads the export and gives the continuation
    log-likelihood our model gives."""
    huggingface = pytest.importorskip("lm_eval.models.huggingface")
    from lm_eval.api.instance import Instance

    model = random_qwen3(tied=False, seed=3)
    out = export(model, tokeniser_file, tmp_path)
    lm = huggingface.HFLM(pretrained=str(out), device="cpu", batch_size=1, dtype="float32")
    context, continuation = "The quick brown", " fox jumps"
    request = Instance("loglikelihood", {}, (context, continuation), 0)
    [(loglik, _)] = lm.loglikelihood([request])
    tok = get_tokeniser(str(tokeniser_file))
    ctx, cont = tok.encode_ordinary(context), tok.encode_ordinary(continuation)
    with torch.no_grad():
        logits, _ = model(torch.tensor([ctx + cont]))
    assert logits is not None
    logprobs = logits[0, len(ctx) - 1 : -1].log_softmax(-1)
    ours = logprobs[torch.arange(len(cont)), torch.tensor(cont)].sum().item()
    assert loglik == pytest.approx(ours, abs=1e-4)
