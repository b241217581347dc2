"""Weight layouts for decoding on CPU: the one module that uses private PyTorch ops.

Decoding reads every weight once per generated token, so the weights' memory layout (and how
the BLAS spreads a product of a few rows over the threads) decides its speed, and a copy in a
faster layout pays only if it saves more than its own cost (40-90 ms for the 30M parameters of
bench/generate.py's model, most of it the lm_head) within one call. Measured with that model (6
layers x 384 wide, GPT-2 vocabulary, 128 new tokens, 2 threads), float32, the copies' cost
included, against F.linear on the (out, in) parameters; the two kinds of CPU differ:

    2-core Intel Xeon (AMX; the rules for every CPU but the AVX2-only ones, `avx2_only`):
    one sequence    an input-major (in, out) copy of the lm_head: ~1.05x; copies of the blocks'
                    layers lost (0.95x input-major, 0.85x with packed narrowing layers)
    2 or 3          no copy: an input-major lm_head ran 0.8-0.9x, packed copies 0.82-0.89x
    4 or more       oneDNN's packed (blocked) copies of every weight
                    (`torch.ops.mkldnn._reorder_linear_weight`, applied with `_linear_pointwise`):
                    1.14x at batch 4, 1.09x at 8

    2-core AMD EPYC (AVX2 only; the rules for x86 CPUs at that level), `python bench/generate.py
    --layouts` (copies' cost included, against the layers as they are): MKL multiplies a few
    rows by a whole (out, in) weight on one thread here (torch.mv took the same 6.3 ms for the
    lm_head with one thread or two), and 2 or 3 rows ran no faster than one
    one sequence    no copy: every weight applied as `SplitLinear`, its rows in one group per
                    thread, multiplied as one batched product that MKL spreads over the
                    threads: 1.62x (the Xeon's input-major lm_head 1.33x, packed 1.37x)
    2 or more       oneDNN's packed copies: 2.44x at batch 2, 2.93x at 3, 1.74x at 8 (split
                    weights 1.52x, 1.62x, 1.28x)

A bfloat16 model (inference.py --dtype bfloat16) is packed at every batch size on a CPU that
multiplies bfloat16 natively (gpt/capability.py): against what float32 does at 1 and 2 (an
input-major lm_head; the layers as they are), 1.40x at batch 1 and 1.41x at 2 (the Xeon, whose
oneDNN multiplies bfloat16 with AMX). On a CPU that would emulate bfloat16 (AVX2 only) oneDNN
cannot pack it: its layers are used as they are (inference.py warns that float32 is faster
there). No ARM CPU and no AMD CPU with AVX-512 has been measured: both keep the Xeon's rules,
as every CPU did before the EPYC's were measured.
GPUs and autocast (which the copies would ignore) use the parameters as they are.

How the copies reach the blocks: `LanguageModel.hidden` takes a `linear` argument, the function
the blocks apply their linear layers with (`linear(layer, x)`; by default the layer itself), and
`DecodingWeights.linear` applies the layer's copy (or split view) instead where it has one, so
the same block code runs either way. The decoding loop (gpt/model/generate.py) builds a
`DecodingWeights` at the start of one generate call and drops it at the end: nothing is stored
on the model, a weight change between two calls is seen at once, and the training loop knows
nothing of these copies, which cost up to the weights' own memory for the duration of the call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from gpt.capability import cpu_capability
from gpt.model.base import LanguageModel


def avx2_only() -> bool:
    """Whether this CPU decodes float32 by the layouts measured on the AVX2-only AMD EPYC: an
    x86 CPU whose widest level in use is AVX2 (gpt/capability.py). Every other CPU (AVX-512,
    AMX, and the unmeasured ones: ARM, older x86) keeps those measured on the Intel Xeon."""
    return cpu_capability().isa == "AVX2"


def float32_pack_from() -> int:
    """The smallest batch of float32 sequences decoded through packed copies on this CPU: 2 on
    AVX2-only CPUs, 4 on the others (module docstring)."""
    return 2 if avx2_only() else 4


def pack_from(dtype: torch.dtype) -> int | None:
    """The smallest batch decoded through packed copies of `dtype` weights on this CPU, or None
    where they are not packed: float32 from `float32_pack_from`, bfloat16 from 1 where the CPU
    multiplies it natively, nothing else (float64 and float16 oneDNN cannot pack)."""
    if dtype == torch.float32:
        return float32_pack_from()
    if dtype == torch.bfloat16 and cpu_capability().native_bfloat16:
        return 1
    return None


def packing_available() -> bool:
    """Whether oneDNN can pre-pack linear weights on this build (x86 and ARM CPU builds)."""
    ops = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


class PackedLinear:
    """y = x W^T + b for x (..., in) through oneDNN's packed copy of W (out, in)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: int) -> None:
        # rows: how many rows each call multiplies, the hint oneDNN picks its blocking from
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows)
        self.bias = bias.detach() if bias is not None else None
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)  # (N, in): the kernel takes 3-D input ~1.4x slower
        y = torch.ops.mkldnn._linear_pointwise(rows, self.weight, self.bias, "none", [], "")
        return y.view(x.shape[:-1] + (self.out_features,))  # (..., out)


class InputMajorLinear:
    """y = x W^T for x (..., in) from a contiguous (in, out) copy of W (out, in), which one row
    multiplies faster than F.linear does the (out, in) storage."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight.detach().t().contiguous()  # (in, out)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight  # (..., out)


class SplitLinear:
    """y = x W^T + b for x (..., in) of a few rows, read from W (rows, in) as it is stored: its
    rows in `parts` equal groups multiplied as one batched product, whose groups MKL runs on
    separate threads (a product of a few rows by the whole W ran on one thread: module
    docstring). keep: the output columns returned (default: all rows; the lm_head keeps the real
    vocabulary of its padded rows); kept rows that the equal groups leave out (fewer than
    `parts`) are multiplied on their own and appended. Views only: nothing is copied."""

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, parts: int, keep: int | None = None
    ) -> None:
        rows, self.in_features = weight.shape
        self.out_features = rows if keep is None else keep
        parts = min(parts, rows)
        group = rows // parts
        grouped = parts * group  # rows in the groups; the other rows - grouped (< parts) go alone
        weight = weight.detach()
        self.weight = weight[:grouped].view(parts, group, -1).transpose(1, 2)  # (parts, in, group)
        self.bias = bias.detach()[:grouped].view(parts, 1, group) if bias is not None else None
        self.rest = weight[grouped : self.out_features]  # (< parts, in): usually empty
        self.rest_bias = bias.detach()[grouped : self.out_features] if bias is not None else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(1, -1, self.in_features)  # (1, N, in)
        each = rows.expand(self.weight.size(0), -1, -1)  # (parts, N, in): the same rows, a view
        if self.bias is None:
            y = torch.bmm(each, self.weight)
        else:
            y = torch.baddbmm(self.bias, each, self.weight)  # (parts, N, group)
        y = y.transpose(0, 1).reshape(rows.size(1), -1)  # (N, grouped): a view for one row
        if self.rest.size(0):
            y = torch.cat([y, F.linear(rows[0], self.rest, self.rest_bias)], dim=1)
        return y[:, : self.out_features].reshape(x.shape[:-1] + (self.out_features,))


Projection = Callable[[torch.Tensor], torch.Tensor]
"""A weight applied to x (..., in) -> (..., out)."""


class DecodingWeights:
    """The weights one generate call decodes with: copies where they pay (see the module
    docstring), the model's own layers elsewhere."""

    def __init__(self, layers: dict[nn.Linear, Projection], head: Projection) -> None:
        self.layers = layers
        """A block's linear layer -> its copy; layers without one are applied as they are."""
        self.head = head

    def linear(self, layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """The `Linear` for LanguageModel.hidden: x through the layer's copy if it has one."""
        copy = self.layers.get(layer)
        return layer(x) if copy is None else copy(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, C) -> logits (B, vocab_size), as LanguageModel.logits."""
        return self.head(hidden)


def block_layers(model: LanguageModel) -> list[nn.Linear]:
    """Every linear layer of the model's blocks."""
    return [layer for layer in model.blocks.modules() if isinstance(layer, nn.Linear)]


def packed(model: LanguageModel, batch_size: int) -> DecodingWeights:
    """oneDNN-packed copies of every linear weight of the blocks and of the lm_head."""
    layers: dict[nn.Linear, Projection] = {
        layer: PackedLinear(layer.weight, layer.bias, batch_size) for layer in block_layers(model)
    }
    return DecodingWeights(layers, PackedLinear(model.real_vocab_rows(), None, batch_size))


def split(model: LanguageModel, parts: int) -> DecodingWeights:
    """Every linear weight of the blocks and the lm_head's (its padded rows included, so that
    they group evenly) applied as `parts` groups of rows (SplitLinear)."""
    layers: dict[nn.Linear, Projection] = {
        layer: SplitLinear(layer.weight, layer.bias, parts) for layer in block_layers(model)
    }
    head = SplitLinear(model.lm_head.weight, None, parts, keep=model.config.vocab_size)
    return DecodingWeights(layers, head)


def as_they_are(model: LanguageModel, batch_size: int) -> DecodingWeights:
    """The model's own layers and lm_head."""
    return DecodingWeights({}, model.logits)


def input_major_head(model: LanguageModel, batch_size: int) -> DecodingWeights:
    """The blocks' own layers; an input-major copy of the lm_head's real vocabulary rows."""
    return DecodingWeights({}, InputMajorLinear(model.real_vocab_rows()))


def split_over_threads(model: LanguageModel, batch_size: int) -> DecodingWeights:
    """`split` into as many groups as PyTorch has threads."""
    return split(model, torch.get_num_threads())


LAYOUTS: dict[str, Callable[[LanguageModel, int], DecodingWeights]] = {
    "layers": as_they_are,
    "input-major-head": input_major_head,
    "split": split_over_threads,
    "packed": packed,
}
"""Decoding's weight layouts by name, each built from (model, batch_size): the rule picks one
(`layout_for`), bench/generate.py --layouts times them all."""


def describe_layout(layout: str) -> str:
    """How decoding applies the weights in `layout`, in a few words for a run's header."""
    return {
        "layers": "the weights as they are",
        "input-major-head": "an input-major copy of the lm_head",
        "split": f"every weight split over {torch.get_num_threads()} threads",
        "packed": "oneDNN-packed copies of the weights",
    }[layout]


def layout_for(model: LanguageModel, batch_size: int) -> str:
    """The layout for decoding batch_size sequences with model (module docstring): on CPU
    without autocast (which the copies would ignore), packed copies from the dtype's `pack_from`
    batch on; for one float32 sequence, every weight split over the threads on AVX2-only CPUs and
    an input-major lm_head on the others; the model's own layers otherwise (float64, which
    oneDNN cannot pack, and GPUs)."""
    weight = model.lm_head.weight
    if weight.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
        return "layers"
    smallest = pack_from(weight.dtype)
    if smallest is not None and batch_size >= smallest and packing_available():
        return "packed"
    if batch_size == 1 and weight.dtype == torch.float32:
        return "split" if avx2_only() else "input-major-head"
    return "layers"


def decoding_weights(
    model: LanguageModel, batch_size: int, layout: str | None = None
) -> DecodingWeights:
    """The weights for decoding batch_size sequences with model, in `layout` (one of LAYOUTS;
    default the one `layout_for` picks)."""
    return LAYOUTS[layout or layout_for(model, batch_size)](model, batch_size)
