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

import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from gpt.hellaswag.data import N_ENDINGS, HellaSwagError
from gpt.model.base import LanguageModel, varying_shapes

DEFAULT_BATCH_SIZE = 16
ROW_TOKENS = 256  # packed rows hold at least this many tokens (longer when one example needs it)


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


def unwrap(model: nn.Module) -> LanguageModel:
    """Our model (either family) inside a DDP wrapper (`.module`) and/or torch.compile
    (`._orig_mod`)."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
    if not isinstance(model, LanguageModel):
        raise TypeError(f"expected one of our models, got {type(model).__name__}")
    return model


def _log_likelihoods(
    logits: torch.Tensor, tgt: torch.Tensor, owner: torch.Tensor, n_items: int
) -> torch.Tensor:
    """Sum the log-probabilities of `tgt` under `logits` (M, V) into (n_items, 4); half precision
    logits are upcast to float32 first."""
    logits = logits.float() if logits.element_size() < 4 else logits
    logp = torch.log_softmax(logits, dim=-1).gather(1, tgt[:, None]).squeeze(1)  # (M,)
    ll = torch.zeros(n_items * N_ENDINGS, dtype=logp.dtype, device=logits.device)
    return ll.index_add_(0, owner, logp).view(n_items, N_ENDINGS)


def score_packed_batch(
    model: LanguageModel, items: Sequence[Encoded], device: torch.device
) -> torch.Tensor:
    """Log-likelihoods (len(items), 4) of each ending, from one packed forward pass."""
    b = build_packed_batch(items)
    idx, pos, mask = b.idx.to(device), b.pos.to(device), b.mask.to(device)
    with varying_shapes():  # the number of rows R differs from batch to batch
        hidden = model.hidden(idx, positions=pos, mask=mask)  # (R, T, C)
    h = hidden.flatten(0, 1)[b.src.to(device)]  # (M, C): only positions that predict an ending
    logits = model.logits(h)  # (M, V)
    return _log_likelihoods(logits, b.tgt.to(device), b.owner.to(device), len(items))


def score_seed_batch(
    model: LanguageModel, items: Sequence[Encoded], device: torch.device
) -> torch.Tensor:
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


def _our_items(
    model: LanguageModel, tokeniser: Any, examples: Sequence[dict[str, Any]]
) -> list[Encoded]:
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
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    n = int(counts[0].item())
    return {
        "n": n,
        **{m: counts[j + 1].item() / max(n, 1) for j, m in enumerate(METRICS)},
        "cut": int(counts[-1].item()),
    }
