"""The training loop: schedule, optimizer groups, accumulation, validation, logs, compile, NaN."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest
import torch

from gpt import checkpoint as ckpt
from gpt.cli import UserError
from gpt.config import TrainConfig, model_preset, train_preset
from gpt.data.loader import DataLoader
from gpt.data.tokeniser import GPTTokeniser
from gpt.finish import finish_run
from gpt.model.generate import generate
from gpt.model.gpt2 import GPT
from gpt.runlog import read_events
from gpt.train import rundir
from gpt.train import state as train_state
from gpt.train.logs import RunLogger, truncate_logs
from gpt.train.loop import NonFiniteLossError, train
from gpt.train.recipe import configure_optimizer, grad_accum_steps, lr_at

LOG_LINE = re.compile(r"^ ?\d+ \(\d+\) (train|val|hella|ckpt) -?\d+\.\d{4}$")


def events(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["kind"] == kind]


def write_hellaswag(path: Path, n: int = 6) -> Path:
    """A few HellaSwag-shaped items (the scorer only needs ctx, endings, label)."""
    items = [
        {
            "ctx": f"The function number {i} returns",
            "endings": ["a list.", "the value.", "an error.", "nothing at all."],
            "label": i % 4,
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in items))
    return path


# ----------------------------------------------------------------------------- recipe arithmetic


def test_lr_schedule_hand_worked() -> None:
    cfg = TrainConfig(max_lr=1.0, min_lr_ratio=0.1, warmup_steps=10)
    # warm-up: (step + 1) / warmup * max
    assert lr_at(0, cfg, 110) == pytest.approx(0.1)
    assert lr_at(9, cfg, 110) == pytest.approx(1.0)
    # cosine from max at step 10 to min at step 110, half-way at 60
    assert lr_at(10, cfg, 110) == pytest.approx(1.0)
    assert lr_at(60, cfg, 110) == pytest.approx(0.1 + 0.5 * 0.9)
    assert lr_at(35, cfg, 110) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    # min at max_steps, flat after
    assert lr_at(110, cfg, 110) == pytest.approx(0.1)
    assert lr_at(500, cfg, 110) == pytest.approx(0.1)


def test_default_recipe_is_gpt_alpha_124m() -> None:
    cfg = train_preset("gpt2")
    config = model_preset(cfg.model, pad_vocab_multiple=cfg.pad_vocab_multiple)
    assert config.padded_vocab_size == 50304
    assert (cfg.batch_size, cfg.seq_len, cfg.total_batch_size) == (64, 1024, 524288)
    assert (cfg.max_lr, cfg.min_lr_ratio, cfg.warmup_steps) == (1.8e-3, 0.04, 715)
    assert (cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay, cfg.grad_clip) == (
        0.9,
        0.95,
        1e-8,
        0.1,
        1.0,
    )
    assert cfg.seed == 1337 and cfg.eval_every == 150 and cfg.max_steps is None
    assert grad_accum_steps(cfg, 8) == 1 and grad_accum_steps(cfg, 1) == 8


@pytest.mark.parametrize(
    ("batch", "seq", "world", "total", "accum"),
    [(4, 32, 1, 128, 1), (4, 32, 1, 512, 4), (4, 32, 2, 512, 2), (2, 16, 4, 1024, 8)],
)
def test_grad_accum_steps(batch: int, seq: int, world: int, total: int, accum: int) -> None:
    cfg = TrainConfig(batch_size=batch, seq_len=seq, total_batch_size=total)
    assert grad_accum_steps(cfg, world) == accum


def test_grad_accum_must_divide() -> None:
    cfg = TrainConfig(batch_size=4, seq_len=32, total_batch_size=300)
    with pytest.raises(ValueError, match="not a multiple of batch_size"):
        grad_accum_steps(cfg, 1)


def test_weight_decay_only_on_matrices(tiny_config) -> None:
    model = GPT(tiny_config)
    opt = configure_optimizer(model, TrainConfig(weight_decay=0.1), torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() == 1 for p in no_decay["params"])
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == model.num_params()  # every parameter once, the tied embedding included


# ----------------------------------------------------------------------------- logs


def test_logs_are_versioned_truncated_on_resume_and_read_back(tmp_path: Path) -> None:
    """metrics.jsonl opens with its format record, which a resume's truncation keeps; log.txt
    keeps the seed's format; both read back as the same events; another version is refused."""
    log = RunLogger(tmp_path, TrainConfig(), enabled=True, fresh=True)
    for step in range(3):
        log.event(step, (step + 1) * 10, "train", 5.0 - step, lr=1e-3)
    log.event(2, 30, "val", 4.5)
    log.event(2, 30, "sample", "text", index=0)
    log.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"kind": "format", "format": "gpt-alpha-metrics", "version": 1}
    assert (tmp_path / "log.txt").read_text().splitlines()[-1] == " 2 (30) val 4.5000"
    expected = [(0, 10, "train", 5.0), (1, 20, "train", 4.0), (2, 30, "train", 3.0)]
    assert read_events(tmp_path / "metrics.jsonl")[:3] == expected
    assert [e[:3] for e in read_events(tmp_path / "log.txt")] == [e[:3] for e in expected] + [
        (2, 30, "val")
    ]

    truncate_logs(tmp_path, 2)  # resuming from the checkpoint after 2 steps
    kept = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert kept[0]["kind"] == "format"
    assert [(e["step"], e["kind"]) for e in kept[1:]] == [
        (0, "train"),
        (1, "train"),
        (2, "val"),
        (2, "sample"),
    ]
    assert len((tmp_path / "log.txt").read_text().splitlines()) == 3

    newer = tmp_path / "newer.jsonl"
    newer.write_text('{"kind": "format", "format": "gpt-alpha-metrics", "version": 2}\n')
    with pytest.raises(UserError, match=r"newer.jsonl:1: metrics format .* version 2"):
        read_events(newer)


# ----------------------------------------------------------------------------- runs


def test_tiny_run_logs_checkpoints_and_learns(tiny_run_config, tmp_path: Path) -> None:
    hella = write_hellaswag(tmp_path / "hellaswag.jsonl")
    cfg = tiny_run_config(max_steps=10, keep=1, hellaswag=str(hella))
    result = train(cfg)
    run = Path(cfg.out)

    lines = (run / "log.txt").read_text().splitlines()
    assert all(LOG_LINE.match(line) for line in lines), lines
    train_events = events(run, "train")
    assert [e["step"] for e in train_events] == list(range(10))
    assert [e["tokens"] for e in train_events] == [(s + 1) * 128 for s in range(10)]
    assert {"lr", "grad_norm", "dt_ms", "tok_s", "mfu"} <= set(train_events[0])
    assert train_events[-1]["value"] < train_events[0]["value"] - 0.5
    assert [e["step"] for e in events(run, "val")] == [0, 5, 10]
    hellas = events(run, "hella")
    assert [e["n"] for e in hellas] == [6, 6, 6]
    assert all(0.0 <= e["value"] <= 1.0 for e in hellas)
    assert len(events(run, "sample")) == 3
    assert all(e["value"].startswith(cfg.sample_prompt) for e in events(run, "sample"))

    # the last samples are those of the final weights (fresh from the checkpoint)
    final, _ = ckpt.load_model_dir(rundir.step_dir(run, 10))
    tok = GPTTokeniser(Path(cfg.tokeniser))
    prompt = [tok.eot_token, *tok.encode(cfg.sample_prompt)]
    generator = torch.Generator().manual_seed(cfg.sample_seed)
    new = generate(
        final,
        torch.tensor([prompt]),
        cfg.sample_tokens,
        temperature=cfg.sample_temperature,
        top_k=cfg.sample_top_k,
        eos_token=tok.eot_token,
        generator=generator,
    )[0, len(prompt) :].tolist()
    new = new[: new.index(tok.eot_token)] if tok.eot_token in new else new
    assert events(run, "sample")[-1]["value"] == cfg.sample_prompt + tok.decode(new)

    # the text log holds the same numbers
    val_lines = [line for line in lines if " val " in line]
    assert val_lines[1] == f" 5 (768) val {events(run, 'val')[1]['value']:.4f}"

    saved = json.loads((run / "config.json").read_text())
    assert saved["train"] == cfg.to_dict()
    assert saved["grad_accum_steps"] == 1 and saved["max_steps"] == 10

    # keep=1: the newest checkpoint plus the best one
    assert rundir.latest_checkpoint(run) == rundir.step_dir(run, 10)
    best = rundir.best_checkpoint(run)
    assert best == result.best_checkpoint
    assert set(rundir.list_checkpoints(run)) == {best, rundir.step_dir(run, 10)}
    vals = [e["value"] for e in events(run, "val")]
    assert result.best_val_loss == min(vals) and result.final_val_loss == vals[-1]
    _, meta = ckpt.load_model_dir(best)
    assert meta["training"]["best_val_loss"] == min(vals)


def test_validation_loss_matches_direct_computation(tiny_run_config, tiny_train_data) -> None:
    cfg = tiny_run_config(max_steps=1, samples=0, save_every=0)
    result = train(cfg)
    # step 0's validation: the freshly initialised model on val_tokens // (B*T) = 4 batches
    torch.manual_seed(cfg.seed)
    model = GPT(model_preset("tiny", vocab_size=512, pad_vocab_multiple=64)).eval()
    loader = DataLoader(tiny_train_data, cfg.batch_size, cfg.seq_len, split="val")
    with torch.no_grad():
        losses = [model(*loader.next_batch())[1].item() for _ in range(4)]
    first_val = events(Path(cfg.out), "val")[0]["value"]
    assert first_val == pytest.approx(sum(losses) / 4, abs=1e-6)
    assert result.final_val_loss is not None and result.final_val_loss < first_val


def first_model(cfg: TrainConfig) -> GPT:
    """The model a run of `cfg` on the 512-token test data starts from (the trainer seeds
    before building it)."""
    torch.manual_seed(cfg.seed)
    return GPT(model_preset("tiny", vocab_size=512, pad_vocab_multiple=cfg.pad_vocab_multiple))


def first_step_gradients(cfg: TrainConfig, batch: int) -> dict[str, torch.Tensor]:
    """The gradients of the first optimizer step of `cfg` read as micro-batches of `batch` rows
    (the loss of each divided by the number of micro-batches, as the trainer does)."""
    model = first_model(cfg)
    loader = DataLoader(cfg.data, batch_size=batch, seq_len=cfg.seq_len, seed=cfg.seed)
    accum = cfg.total_batch_size // (batch * cfg.seq_len)
    for _ in range(accum):
        (model(*loader.next_batch())[1] / accum).backward()
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def test_grad_accumulation_equals_a_bigger_batch(tiny_run_config, tmp_path: Path) -> None:
    """Micro-batches 4 x accum 2 read the same rows as one batch of 8 (the loader lays a step's
    tokens out row after row), so they compute the same step up to float32 rounding."""
    cfg = tiny_run_config(total_batch_size=256)
    # Gradients: each element sums 256 per-position terms, in another order (and with one more
    # halving) in the two set-ups. Reordering a float32 sum of n terms moves it by at most about
    # n * 2**-24 = 1.5e-5 of the sum of the terms' magnitudes, so 1e-5 of the largest gradient
    # (plus a relative 1e-4) leaves room without hiding a missing or doubled micro-batch, which
    # changes gradients by about their own size.
    grads4, grads8 = first_step_gradients(cfg, 4), first_step_gradients(cfg, 8)
    for name, g in grads8.items():
        torch.testing.assert_close(grads4[name], g, rtol=1e-4, atol=1e-5 * g.abs().max().item())

    runs = {}
    for batch in (4, 8):
        run_cfg = tiny_run_config(
            batch_size=batch,
            total_batch_size=256,
            max_steps=6,
            samples=0,
            save_every=0,
            out=str(tmp_path / f"b{batch}"),
        )
        train(run_cfg)
        model, _ = ckpt.load_model_dir(rundir.latest_checkpoint(run_cfg.out))
        runs[batch] = ([e["value"] for e in events(Path(run_cfg.out), "train")], model.state_dict())
    (losses4, weights4), (losses8, weights8) = runs[4], runs[8]
    # Step 0's loss: the same weights on the same rows, a mean of 256 terms taken in two orders:
    # float32 rounding only (see above).
    assert losses4[0] == pytest.approx(losses8[0], rel=2e-5)
    # Later steps: AdamW divides each gradient by its running RMS, so an element whose gradient
    # is at the level of rounding noise can move by up to ~lr in one run and not the other; the
    # losses stay within a small fraction of their change over the run.
    change = abs(losses8[0] - losses8[-1])
    assert all(abs(a - b) <= 1e-3 * change for a, b in zip(losses4, losses8, strict=True))
    # Weights: by Cauchy-Schwarz, Adam's bias-corrected |m / sqrt(v)| is at most
    # (1 - b1) / sqrt(1 - b2) * sqrt(1 / (1 - b1**2 / b2)) = 1.16 for b1 0.9, b2 0.95 (at most
    # 1.005 in the first 6 steps), so two runs can part by at most 2 * 1.2 * lr per step (weight
    # decay adds lr * 0.1 of a difference: negligible), summed over the steps. Beyond that hard
    # bound, the runs must agree on average: their mean difference must be far below the mean
    # distance the weights travelled (a real difference in the gradients makes it ~1x).
    init = first_model(cfg).state_dict()
    bound = sum(2 * 1.2 * lr_at(step, run_cfg, 6) for step in range(6))
    for name, w in weights8.items():
        diff = (weights4[name] - w).abs()
        assert diff.max().item() <= bound, name
        travelled = (w - init[name]).abs().mean().item()
        assert diff.mean().item() <= 1e-2 * travelled, name


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(
    tiny_run_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_forward = GPT.forward
    calls = {"train": 0}

    def forward(self: GPT, idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits, loss = real_forward(self, idx, targets)
        if self.training:
            calls["train"] += 1
            if calls["train"] == 8:  # step 7
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(GPT, "forward", forward)
    cfg = tiny_run_config(max_steps=10, samples=0)
    with pytest.raises(NonFiniteLossError, match="non-finite loss .* at step 7") as err:
        train(cfg)
    good = rundir.step_dir(cfg.out, 5)
    assert str(good) in str(err.value)
    assert rundir.latest_checkpoint(cfg.out) == good
    state = train_state.load_training_state(good)
    assert state.step == 5 and state.tokens == 5 * 128


def test_tokeniser_must_match_the_data(tiny_run_config, tmp_path: Path) -> None:
    other = GPTTokeniser.train(["some other text entirely"] * 20, 300)
    other.save(tmp_path / "other.tkn")
    with pytest.raises(ValueError, match="does not match"):
        train(tiny_run_config(tokeniser=str(tmp_path / "other.tkn")))


def test_a_new_run_never_mixes_with_a_checkpointed_one(tiny_run_config) -> None:
    train(tiny_run_config(max_steps=2, samples=0))
    with pytest.raises(ValueError, match="already holds a run with checkpoints: continue it"):
        train(tiny_run_config(max_steps=2, samples=0))


def test_seq_len_longer_than_the_model_is_refused(tiny_run_config) -> None:
    with pytest.raises(ValueError, match="exceeds the tiny model's block_size 64"):
        train(tiny_run_config(seq_len=128, total_batch_size=512))


@pytest.mark.parametrize("package", ["tensorboard", "wandb"])
def test_optional_loggers_are_never_required(tiny_run_config, package: str) -> None:
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed")
    with pytest.raises(ValueError, match=f"--{package} needs the {package} package: pip install"):
        train(tiny_run_config(**{package: True}))


@pytest.mark.slow
def test_compiled_training_matches_eager_and_evaluation_still_works(
    tiny_run_config, tmp_path: Path
) -> None:
    """torch.compile on CPU (needs a C++ compiler): the same losses as eager for 2 steps, and
    validation, HellaSwag and sampling (uncompiled handle) run in the compiled run."""
    hella = write_hellaswag(tmp_path / "hellaswag.jsonl", n=4)
    losses = {}
    for compiled in (False, True):
        cfg = tiny_run_config(
            compile=compiled,
            max_steps=2,
            eval_every=1,
            hellaswag=str(hella),
            out=str(tmp_path / f"compile_{compiled}"),
        )
        train(cfg)
        run = Path(cfg.out)
        losses[compiled] = [e["value"] for e in events(run, "train")]
        assert [e["step"] for e in events(run, "val")] == [0, 1, 2]
        assert len(events(run, "hella")) == 3 and len(events(run, "sample")) == 3
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("gpt.hf") is None, reason="gpt/hf.py not there yet")
def test_run_exports_the_best_checkpoint(tiny_run_config) -> None:
    cfg = tiny_run_config(max_steps=3, export=True, samples=0)
    result = finish_run(train(cfg), cfg)
    assert result.export_dir == Path(cfg.out) / "export"
    assert (result.export_dir / "config.json").is_file()
