"""HellaSwag: pick the right ending of a sentence, for our checkpoints and Hugging Face models.

    python hellaswag.py -m RUN/checkpoints/best            # one of our checkpoint directories
    python hellaswag.py -m gpt2 --limit 1000                # a Hugging Face hub name or directory
    python hellaswag.py -m EleutherAI/pythia-160m --data hellaswag_val.jsonl --output r.json

Each item is a context and four endings. The model reads the context tokens followed by the tokens
of `" " + ending` (as the seed and build-nanogpt do) and three choices are reported:
    acc             the ending with the highest total log-likelihood
    acc_norm        the ending with the lowest mean per-token loss (the seed's metric; reference
                    figures on the full val split: GPT-2 124M 0.2955, GPT-3 125M 0.337)
    acc_norm_bytes  the ending with the highest log-likelihood per UTF-8 byte of its text: what
                    lm-evaluation-harness reports as `acc_norm` (there per character, the same
                    thing on HellaSwag's ASCII text) and `acc_bytes`

Our models are scored by packing: an example's context and its four endings form ONE sequence
`ctx e0 e1 e2 e3`, each ending attending to the context and to itself only (an attention mask) with
positions restarting after the context, so the context is computed once. Several examples share a
row and a batch holds several rows, so little work goes to padding, and the vocabulary projection
runs only at the positions that predict an ending token. Hugging Face models (any causal LM, scored
with its own tokenizer) use a plain batch of four right-padded rows per example, sorted by length.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gpt.checkpoint import is_checkpoint, load_model_dir
from gpt.cli import ArgumentParser, UserError, run
from gpt.fsio import write_json_atomic
from gpt.model.gpt2 import GPT

HELLASWAG_URL = (
    "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_{split}.jsonl"
)
SPLITS = ("val", "train")  # the test split has no labels
N_ENDINGS = 4
DEFAULT_BATCH_SIZE = 16
ROW_TOKENS = 256  # packed rows hold at least this many tokens (longer when one example needs it)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Seconds a download may wait to connect or for more data: offline (a firewall that drops
# packets), training goes on without HellaSwag after this, not after minutes.
DOWNLOAD_TIMEOUT_S = 10


class HellaSwagError(UserError):
    """The HellaSwag file is missing, cannot be fetched, or is malformed."""


# ----------------------------------------------------------------------------- data


def cache_dir() -> Path:
    """Where downloaded splits live: env HELLASWAG_DIR, else ~/.cache/gpt-alpha/hellaswag."""
    env = os.environ.get("HELLASWAG_DIR")
    return Path(env) if env else Path.home() / ".cache" / "gpt-alpha" / "hellaswag"


def find_hellaswag_file(path: str | None = None, split: str = "val") -> Path | None:
    """The split's jsonl: `path` if given, else (val split) env HELLASWAG_FILE, else the download
    cache. Returns None when the file is not there; never downloads, never raises for absence.
    """
    if path is not None:
        return Path(path) if Path(path).is_file() else None
    env = os.environ.get("HELLASWAG_FILE")
    if split == "val" and env and Path(env).is_file():
        return Path(env)
    cached = cache_dir() / f"hellaswag_{split}.jsonl"
    return cached if cached.is_file() else None


def download_split(split: str = "val", dest_dir: Path | None = None) -> Path:
    """Download one split from the HellaSwag repository into `dest_dir` (atomic), once."""
    dest_dir = cache_dir() if dest_dir is None else dest_dir
    dest = dest_dir / f"hellaswag_{split}.jsonl"
    if dest.is_file():
        return dest
    url = HELLASWAG_URL.format(split=split)
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with (
            os.fdopen(fd, "wb") as f,
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
        ):
            shutil.copyfileobj(response, f)
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError) as e:
        Path(tmp).unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise HellaSwagError(
            f"cannot download {url} ({reason}); fetch that file to {dest}"
        ) from None
    return dest


def load_examples(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Read HellaSwag items (`ctx`, `endings` (4 strings), `label` 0-3) from a jsonl file.

    Other fields are kept. Raises HellaSwagError naming the file and line of a bad item.
    """
    path = Path(path)
    if not path.is_file():
        raise HellaSwagError(f"no such HellaSwag file: {path}")
    examples: list[dict[str, Any]] = []
    for lineno, line in _numbered_lines(path):
        if limit is not None and len(examples) >= limit:
            break
        if line.strip():
            examples.append(_validated(line, f"{path}:{lineno}"))
    if not examples:
        raise HellaSwagError(f"{path}: no HellaSwag items")
    return examples


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number from 1, line) of a UTF-8 text file; HellaSwagError naming the file, and the
    line that is not UTF-8 (decoded line by line: a text-mode file decodes ahead, in blocks)."""
    try:
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    yield lineno, raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise HellaSwagError(f"{path}:{lineno}: not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise HellaSwagError(f"{path}: cannot read ({e.strerror})") from None


def _validated(line: str, where: str) -> dict[str, Any]:
    """One parsed, checked item; labels given as strings ("2") become ints."""
    try:
        ex = json.loads(line)
    except json.JSONDecodeError as e:
        raise HellaSwagError(f"{where}: not JSON ({e.msg})") from None
    if not isinstance(ex, dict) or not isinstance(ex.get("ctx"), str):
        raise HellaSwagError(f"{where}: an item needs a string 'ctx'")
    endings = ex.get("endings")
    if not (
        isinstance(endings, list)
        and len(endings) == N_ENDINGS
        and all(isinstance(e, str) for e in endings)
    ):
        raise HellaSwagError(f"{where}: 'endings' must be a list of {N_ENDINGS} strings")
    label = ex.get("label")
    if isinstance(label, str) and label.isascii() and label.isdigit():
        label = int(label)
    if not isinstance(label, int) or not 0 <= label < N_ENDINGS:
        raise HellaSwagError(f"{where}: 'label' must be 0-{N_ENDINGS - 1}, got {label!r}")
    return {**ex, "label": label}


# ----------------------------------------------------------------------------- scoring


@dataclass
class Encoded:
    """One item as tokens: the context and the four endings, cut to fit the model's context."""

    ctx: list[int]
    endings: list[list[int]]
    cut: bool = False
    """Whether tokens were cut (see `fit_context`)."""

    @property
    def packed_len(self) -> int:
        return len(self.ctx) + sum(len(e) for e in self.endings)

    @property
    def padded_len(self) -> int:
        return len(self.ctx) + max(len(e) for e in self.endings)


def encode_examples(
    examples: Sequence[dict[str, Any]],
    encode_batch: Callable[[list[str]], list[list[int]]],
    max_len: int,
    prefix: Sequence[int] = (),
    empty_ctx: int = 0,
) -> list[Encoded]:
    """Tokenise contexts and `" " + ending`s, each item cut to fit `max_len` (`fit_context`).
    `prefix` (a BOS token) starts every context; an empty context becomes `[empty_ctx]`, so that
    the first ending token always has a position predicting it."""
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2 (a context token and an ending token): {max_len}")
    ctxs = encode_batch([ex["ctx"] for ex in examples])
    ends = encode_batch([" " + e for ex in examples for e in ex["endings"]])
    out = []
    for i, ctx in enumerate(ctxs):
        endings = ends[N_ENDINGS * i : N_ENDINGS * (i + 1)]
        if min(len(e) for e in endings) == 0:
            raise HellaSwagError(f"item {i}: an ending encodes to no tokens")
        out.append(fit_context([*prefix, *ctx] or [empty_ctx], endings, max_len))
    return out


def fit_context(ctx: list[int], endings: list[list[int]], max_len: int) -> Encoded:
    """The item with its context followed by any ending within `max_len` positions.

    As lm-evaluation-harness does, a sequence that is too long keeps its last tokens: the context
    loses tokens on the left, the endings stay whole. The four endings share one context here, so it
    is cut to fit the longest ending (the harness cuts per ending, and it keeps one token more: it
    never feeds the final ending token, which our packed rows do). An ending longer than
    max_len - 1 tokens, which the harness refuses (it asserts that a continuation fits), keeps its
    last max_len - 1 tokens after the context's last token, and only those are scored: the rule of
    "the last tokens that fit" again, so that a model with a short context still gets a score.

    >>> fit_context([1, 2, 3, 4], [[5], [6, 7]], max_len=4)
    Encoded(ctx=[3, 4], endings=[[5], [6, 7]], cut=True)
    >>> fit_context([1, 2], [[5, 6, 7, 8, 9], [3]], max_len=4)
    Encoded(ctx=[2], endings=[[7, 8, 9], [3]], cut=True)
    """
    kept = [end[-(max_len - 1) :] for end in endings]
    ctx_room = max_len - max(len(end) for end in kept)  # >= 1
    cut = len(ctx) > ctx_room or kept != endings
    return Encoded(ctx[-ctx_room:], kept, cut)


def _length_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices in chunks of `batch_size`, longest first, so a batch holds similar lengths."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: group item indices into rows whose lengths sum to <= capacity.

    >>> pack_rows([5, 3, 4, 2], capacity=7)
    [[0, 3], [2, 1]]
    """
    rows: list[list[int]] = []
    used: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, u in enumerate(used):
            if u + lengths[i] <= capacity:
                rows[r].append(i)
                used[r] += lengths[i]
                break
        else:
            rows.append([i])
            used.append(lengths[i])
    return rows


@dataclass
class PackedBatch:
    """Packed rows of items (see `build_packed_batch`)."""

    idx: torch.Tensor  # (R, T) token ids, 0 in the padding
    pos: torch.Tensor  # (R, T) position ids, restarting after each context
    mask: torch.Tensor  # (R, T, T) bool, True where a query (dim 1) may attend to a key (dim 2)
    src: torch.Tensor  # (M,) flat R*T positions whose logits predict an ending token
    tgt: torch.Tensor  # (M,) the ending token each of them predicts
    owner: torch.Tensor  # (M,) item * 4 + ending that the prediction belongs to


def build_packed_batch(items: Sequence[Encoded], capacity: int = ROW_TOKENS) -> PackedBatch:
    """Lay out `items` as packed rows `ctx e0 e1 e2 e3 | ctx e0 ... | pad`.

    Attention: a context token sees the earlier tokens of its context; a token of ending k sees the
    whole context and the earlier tokens of ending k. Every ending restarts at position len(ctx).
    Padding only sees itself. `owner` indexes items in the given order.
    """
    lengths = [it.packed_len for it in items]
    rows = pack_rows(lengths, max(capacity, *lengths))
    R, T = len(rows), max(sum(lengths[i] for i in row) for row in rows)
    idx, pos = np.zeros((R, T), np.int64), np.zeros((R, T), np.int64)
    segment = np.full((R, T), -1, np.int64)  # which item of the row; -1 = padding
    part = np.zeros((R, T), np.int64)  # 0 = context, k + 1 = ending k
    src: list[int] = []
    tgt: list[int] = []
    owner: list[int] = []
    for r, row in enumerate(rows):
        t = 0
        for s, i in enumerate(row):
            ctx = items[i].ctx
            n = len(ctx)
            idx[r, t : t + n], pos[r, t : t + n], segment[r, t : t + n] = ctx, np.arange(n), s
            last_ctx = r * T + t + n - 1
            t += n
            for k, end in enumerate(items[i].endings):
                m = len(end)
                idx[r, t : t + m], pos[r, t : t + m] = end, np.arange(n, n + m)
                segment[r, t : t + m], part[r, t : t + m] = s, k + 1
                src += [last_ctx, *range(r * T + t, r * T + t + m - 1)]
                tgt += end
                owner += [i * N_ENDINGS + k] * m
                t += m
    seg, prt = torch.from_numpy(segment), torch.from_numpy(part)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    same_item = seg[:, :, None] == seg[:, None, :]
    visible_part = (prt[:, None, :] == 0) | (prt[:, None, :] == prt[:, :, None])
    return PackedBatch(
        idx=torch.from_numpy(idx),
        pos=torch.from_numpy(pos),
        mask=same_item & visible_part & causal,
        src=torch.tensor(src),
        tgt=torch.tensor(tgt),
        owner=torch.tensor(owner),
    )


def unwrap(model: nn.Module) -> GPT:
    """Our GPT inside a DDP wrapper (`.module`) and/or torch.compile (`._orig_mod`)."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
    if not isinstance(model, GPT):
        raise TypeError(f"expected our GPT model, got {type(model).__name__}")
    return model


def packed_hidden(
    model: GPT, idx: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Our GPT's forward with explicit positions and attention mask: the final hidden states.

    idx, pos (R, T); mask (R, T, T) bool. Uses the model's own modules, the same arithmetic as
    GPT.forward apart from the mask.
    """
    tr = model.transformer
    n_head = model.config.n_head
    attn_mask = mask[:, None]  # (R, 1, T, T), broadcast over heads
    x = tr.wte(idx) + tr.wpe(pos)  # (R, T, C)
    for block in tr.h:
        h = block.ln_1(x)
        R, T, C = h.shape
        q, k, v = block.attn.c_attn(h).split(C, dim=2)
        # (R, T, C) -> (R, nh, T, hs)
        q, k, v = (z.view(R, T, n_head, C // n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (R, nh, T, hs)
        x = x + block.attn.c_proj(y.transpose(1, 2).reshape(R, T, C))
        x = x + block.mlp(block.ln_2(x))
    return tr.ln_f(x)


def _log_likelihoods(
    logits: torch.Tensor, tgt: torch.Tensor, owner: torch.Tensor, n_items: int
) -> torch.Tensor:
    """Sum the log-probabilities of `tgt` under `logits` (M, V) into (n_items, 4); half precision
    logits are upcast to float32 first."""
    logits = logits.float() if logits.element_size() < 4 else logits
    logp = torch.log_softmax(logits, dim=-1).gather(1, tgt[:, None]).squeeze(1)  # (M,)
    ll = torch.zeros(n_items * N_ENDINGS, dtype=logp.dtype, device=logits.device)
    return ll.index_add_(0, owner, logp).view(n_items, N_ENDINGS)


def score_packed_batch(model: GPT, items: Sequence[Encoded], device: torch.device) -> torch.Tensor:
    """Log-likelihoods (len(items), 4) of each ending, from one packed forward pass."""
    b = build_packed_batch(items)
    hidden = packed_hidden(model, b.idx.to(device), b.pos.to(device), b.mask.to(device))
    h = hidden.flatten(0, 1)[b.src.to(device)]  # (M, C): only positions that predict an ending
    logits = model.lm_head(h)[:, : model.config.vocab_size]  # (M, V)
    return _log_likelihoods(logits, b.tgt.to(device), b.owner.to(device), len(items))


def score_seed_batch(model: GPT, items: Sequence[Encoded], device: torch.device) -> torch.Tensor:
    """The seed's method, as the benchmark baseline: one item at a time, four zero-padded rows of
    `ctx + ending`, full forward pass and cross-entropy at every position, then a masked sum."""
    out = []
    for it in items:
        rows = [it.ctx + e for e in it.endings]
        T = max(len(r) for r in rows)
        tokens = torch.zeros(N_ENDINGS, T, dtype=torch.long)
        mask = torch.zeros(N_ENDINGS, T)
        for k, row in enumerate(rows):
            tokens[k, : len(row)] = torch.tensor(row)
            mask[k, len(it.ctx) : len(row)] = 1
        tokens, mask = tokens.to(device), mask.to(device)
        logits, _ = model(tokens)  # (4, T, V)
        losses = F.cross_entropy(
            logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="none"
        ).view(N_ENDINGS, T - 1)
        out.append(-(losses * mask[:, 1:].to(losses.dtype)).sum(1))
    return torch.stack(out)


def score_hf_batch(
    model: nn.Module, items: Sequence[Encoded], device: torch.device
) -> torch.Tensor:
    """Any Hugging Face causal LM: four right-padded rows per item, attention_mask over padding.

    A forward pre-hook on the output embedding hands it only the hidden states of the positions
    that predict an ending token, so the (rows, T, vocab) logits tensor is never built; the model's
    own code still runs after it (logit scaling, soft-capping).
    """
    rows = [it.ctx + e for it in items for e in it.endings]
    T = max(len(r) for r in rows)
    tokens = torch.zeros(len(rows), T, dtype=torch.long)
    attention = torch.zeros(len(rows), T, dtype=torch.long)
    row_of: list[int] = []
    col_of: list[int] = []
    tgt: list[int] = []
    for j, row in enumerate(rows):
        tokens[j, : len(row)], attention[j, : len(row)] = torch.tensor(row), 1
        n = len(items[j // N_ENDINGS].ctx)
        row_of += [j] * (len(row) - n)
        col_of += range(n - 1, len(row) - 1)
        tgt += row[n:]
    r, c = torch.tensor(row_of, device=device), torch.tensor(col_of, device=device)
    head = model.get_output_embeddings()
    if head is None:
        logits = model(input_ids=tokens.to(device), attention_mask=attention.to(device)).logits
        picked = logits[r, c]  # (M, V)
    else:
        hook = head.register_forward_pre_hook(lambda _m, a: (a[0][r, c][None], *a[1:]))
        try:
            out = model(input_ids=tokens.to(device), attention_mask=attention.to(device)).logits
        finally:
            hook.remove()
        if out.shape[:2] != (1, len(tgt)):
            raise RuntimeError(f"unexpected logits shape {tuple(out.shape)} from the output hook")
        picked = out[0]  # (M, V)
    # row j is item j // 4, ending j % 4: the row index is the flat owner index
    return _log_likelihoods(picked, torch.tensor(tgt, device=device), r, len(items))


ScoreFn = Callable[[Any, Sequence[Encoded], torch.device], torch.Tensor]


@torch.no_grad()
def score_items(
    model: Any,
    items: Sequence[Encoded],
    score_fn: ScoreFn,
    *,
    device: torch.device,
    batch_size: int,
    progress: bool = False,
) -> np.ndarray:
    """Log-likelihoods (N, 4) of every item's endings, `batch_size` items per call of score_fn."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    from tqdm import tqdm

    ll = np.zeros((len(items), N_ENDINGS), np.float64)
    bar = tqdm(total=len(items), unit="ex", disable=not progress, file=sys.stderr)
    for batch in _length_batches([it.packed_len for it in items], batch_size):
        ll[batch] = score_fn(model, [items[i] for i in batch], device).double().cpu().numpy()
        bar.update(len(batch))
    bar.close()
    return ll


def predictions(
    examples: Sequence[dict[str, Any]], items: Sequence[Encoded], ll: np.ndarray
) -> dict[str, np.ndarray]:
    """The ending each metric picks, per item: acc (total log-likelihood), acc_norm (mean
    per-token log-likelihood, i.e. lowest mean loss), acc_norm_bytes (per UTF-8 byte)."""
    n_tokens = np.array([[len(e) for e in it.endings] for it in items], np.float64)
    n_bytes = np.array([[len(e.encode()) for e in ex["endings"]] for ex in examples], np.float64)
    return {
        "acc": ll.argmax(1),
        "acc_norm": (ll / n_tokens).argmax(1),
        "acc_norm_bytes": (ll / np.maximum(n_bytes, 1)).argmax(1),
    }


METRICS = ("acc", "acc_norm", "acc_norm_bytes")


def summarise(
    examples: Sequence[dict[str, Any]], items: Sequence[Encoded], ll: np.ndarray
) -> dict[str, Any]:
    """n, the three accuracies, how many items were cut to fit the model's context, and each
    item's predictions and log-likelihoods."""
    preds = predictions(examples, items, ll)
    labels = np.array([ex["label"] for ex in examples])
    per_example = [
        {
            "index": i,
            "label": int(labels[i]),
            **{f"pred_{m}": int(preds[m][i]) for m in METRICS},
            "loglik": [round(float(x), 6) for x in ll[i]],
            "ending_tokens": [len(e) for e in items[i].endings],
            "cut": items[i].cut,
        }
        for i in range(len(examples))
    ]
    n = len(examples)
    return {
        "n": n,
        **{m: float((preds[m] == labels).mean()) if n else 0.0 for m in METRICS},
        "cut": sum(it.cut for it in items),
        "predictions": per_example,
    }


def _our_items(model: GPT, tokeniser: Any, examples: Sequence[dict[str, Any]]) -> list[Encoded]:
    return encode_examples(
        examples,
        tokeniser.encode_ordinary_batch,
        model.config.block_size,
        empty_ctx=tokeniser.eot_token,
    )


def evaluate(
    model: nn.Module,
    tokeniser: Any,
    examples: Sequence[dict[str, Any]],
    *,
    device: str | torch.device = "cpu",
    batch_size: int = DEFAULT_BATCH_SIZE,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, float | int]:
    """Score our GPT (plain, DDP-wrapped or compiled) on `examples`, this rank's share of them
    (examples[rank::world_size]). Counts are summed over ranks with torch.distributed when
    world_size > 1, so every rank gets the same n, acc, acc_norm, acc_norm_bytes and cut (items cut
    to fit the model's context, `fit_context`), and every rank must call this. Autocast, if any,
    is the caller's."""
    gpt = unwrap(model)
    device = torch.device(device)
    mine = list(examples[rank::world_size])
    # (n, correct per metric..., cut): summed over ranks
    counts = torch.zeros(2 + len(METRICS), dtype=torch.float64, device=device)
    if mine:
        items = _our_items(gpt, tokeniser, mine)
        ll = score_items(gpt, items, score_packed_batch, device=device, batch_size=batch_size)
        preds = predictions(mine, items, ll)
        labels = np.array([ex["label"] for ex in mine])
        correct = [(preds[m] == labels).sum() for m in METRICS]
        cut = sum(it.cut for it in items)
        counts += torch.tensor([len(mine), *correct, cut], dtype=torch.float64).to(device)
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    n = int(counts[0].item())
    return {
        "n": n,
        **{m: counts[j + 1].item() / max(n, 1) for j, m in enumerate(METRICS)},
        "cut": int(counts[-1].item()),
    }


# ----------------------------------------------------------------------------- models


@dataclass
class LoadedModel:
    """A model ready to score: ours or a Hugging Face one, with how to tokenise for it."""

    name: str
    kind: str  # "ours" or "hf"
    model: nn.Module
    encode_batch: Callable[[list[str]], list[list[int]]]
    max_len: int
    prefix: list[int]
    empty_ctx: int


def pick_device(name: str) -> torch.device:
    """`auto`: cuda if available, else mps, else cpu; anything else as torch.device reads it."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise UserError(f"bad --device {name!r}: {e}") from None


def load_ours(path: str, device: torch.device) -> LoadedModel:
    """One of our checkpoint directories, with the tokeniser named in it."""
    from gpt.data.tokeniser import get_tokeniser

    model, meta = load_model_dir(path, device=device)
    tokeniser = get_tokeniser(meta.get("tokeniser") or "gpt2")
    expected = meta.get("tokeniser_fingerprint")
    if expected and expected != tokeniser.fingerprint:
        raise UserError(
            f"{path}: the tokeniser {tokeniser.spec} is not the one it was trained with"
        )
    if tokeniser.n_vocab > model.config.vocab_size:
        raise UserError(
            f"{path}: tokeniser has {tokeniser.n_vocab} tokens, "
            f"the model only {model.config.vocab_size}"
        )
    return LoadedModel(
        name=str(path),
        kind="ours",
        model=model,
        encode_batch=tokeniser.encode_ordinary_batch,
        max_len=model.config.block_size,
        prefix=[],
        empty_ctx=tokeniser.eot_token,
    )


def load_hf(name: str, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """A Hugging Face causal LM (directory or hub name) and its own tokenizer.

    Contexts get the tokenizer's BOS token exactly when its default encoding adds one (OPT, Llama:
    yes; GPT-2, Pythia: no); endings never do.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load Hugging Face model {name!r}: {first}") from None
    bos = tokenizer.bos_token_id
    adds_bos = bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
    cfg = model.config
    max_len = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048)

    def encode_batch(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]

    return LoadedModel(
        name=name,
        kind="hf",
        model=model.to(device).eval(),
        encode_batch=encode_batch,
        max_len=int(max_len),
        prefix=[bos] if adds_bos else [],
        empty_ctx=bos if bos is not None else (tokenizer.eos_token_id or 0),
    )


def load_any(spec: str, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """Our checkpoint directory, else a Hugging Face directory or hub name."""
    if is_checkpoint(spec):
        return load_ours(spec, device)
    p = Path(spec)
    if p.exists() and not (p / "config.json").is_file():
        raise UserError(f"{spec}: neither one of our checkpoints nor a Hugging Face model folder")
    if not p.exists() and (spec.startswith((".", "/", "~")) or spec.count("/") > 1):
        raise UserError(f"no such model directory: {spec}")
    return load_hf(spec, device, dtype)


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="hellaswag.py",
        description="HellaSwag accuracy (acc, acc_norm, acc_norm_bytes) of one of our "
        "checkpoints or a Hugging Face causal LM.",
    )
    p.add_argument(
        "-m", "--model", required=True, help="our checkpoint dir, a HF model dir or a hub name"
    )
    p.add_argument(
        "--data",
        help="local HellaSwag jsonl (default: env HELLASWAG_FILE for the val split, else --split "
        "downloaded once into env HELLASWAG_DIR or ~/.cache/gpt-alpha/hellaswag)",
    )
    p.add_argument(
        "--split", choices=SPLITS, default="val", help="split to download (default: val)"
    )
    p.add_argument("--limit", type=int, help="score only the first N items (default: all)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"items per forward pass; HF models take 4 rows per item (default: "
        f"{DEFAULT_BATCH_SIZE})",
    )
    p.add_argument(
        "--seed-method",
        action="store_true",
        help="our models only: the seed's slow scoring, one item per forward (a baseline)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto (cuda, else mps, else cpu), cpu, cuda:1, ... (default: auto)",
    )
    p.add_argument(
        "--dtype", choices=tuple(DTYPES), default="float32", help="compute dtype (default: float32)"
    )
    p.add_argument("--output", help="also write results and per-item predictions to this JSON")
    return p


def resolve_data(data: str | None, split: str) -> Path:
    """--data if given, else HELLASWAG_FILE or the cache, else a download into the cache."""
    if data is not None:
        if not Path(data).is_file():
            raise HellaSwagError(f"no such HellaSwag file: {data}")
        return Path(data)
    found = find_hellaswag_file(None, split)
    if found is not None:
        return found
    try:
        return download_split(split)
    except HellaSwagError as e:
        raise HellaSwagError(f"{e} or pass --data FILE") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    data = resolve_data(args.data, args.split)
    examples = load_examples(data, args.limit)
    device = pick_device(args.device)
    dtype = DTYPES[args.dtype]
    lm = load_any(args.model, device, dtype)
    if args.seed_method and lm.kind != "ours":
        raise UserError("--seed-method applies to our checkpoints only")
    items = encode_examples(examples, lm.encode_batch, lm.max_len, lm.prefix, lm.empty_ctx)
    score_fn: ScoreFn = score_hf_batch
    if lm.kind == "ours":
        score_fn = score_seed_batch if args.seed_method else score_packed_batch
    t0 = time.perf_counter()
    with torch.autocast(
        device.type, dtype=dtype, enabled=lm.kind == "ours" and dtype != torch.float32
    ):
        ll = score_items(
            lm.model,
            items,
            score_fn,
            device=device,
            batch_size=args.batch_size,
            progress=sys.stderr.isatty(),
        )
    seconds = time.perf_counter() - t0
    result = summarise(examples, items, ll)
    print(
        f"{lm.name}: {result['n']} items, acc {result['acc']:.4f}, "
        f"acc_norm {result['acc_norm']:.4f} (mean token loss), "
        f"acc_norm_bytes {result['acc_norm_bytes']:.4f} (per byte, lm-eval's acc_norm); "
        f"{result['cut']} cut to fit the context; {result['n'] / seconds:.1f} items/s"
    )
    if args.output:
        write_json_atomic(
            Path(args.output),
            {
                "model": lm.name,
                "data": str(data),
                "seconds": round(seconds, 3),
                "metrics": {
                    "acc": "highest total log-likelihood of the ending tokens",
                    "acc_norm": "lowest mean per-token loss of the ending (seed, build-nanogpt)",
                    "acc_norm_bytes": "highest log-likelihood per UTF-8 byte of the ending "
                    "(lm-evaluation-harness's acc_norm / acc_bytes)",
                },
                **result,
            },
        )
    return 0


if __name__ == "__main__":
    run(main)
