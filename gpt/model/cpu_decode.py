"""Weight layouts for decoding on CPU: the one module that uses private PyTorch ops.

Decoding reads every weight once per generated token, so the weights' memory layout decides its
speed, and a copy in a faster layout pays only if it saves more than its own cost (~40 ms for
the 30M parameters of bench/generate.py's model, most of it the lm_head) within one call.
Measured with that model (6 layers x 384 wide, GPT-2 vocabulary, 128 new tokens, 2-core Xeon),
against F.linear on the (out, in) parameters, the copies' cost included:
    one sequence    an input-major (in, out) copy of the lm_head: ~1.05x; copies of the blocks'
                    layers lost (0.95x input-major, 0.85x with packed narrowing layers)
    2 or 3          no copy: an input-major lm_head ran 0.8-0.9x, packed copies 0.82-0.89x
    4 or more       oneDNN's packed (blocked) copies of every weight
                    (`torch.ops.mkldnn._reorder_linear_weight`, applied with `_linear_pointwise`):
                    1.14x at batch 4, 1.09x at 8
A bfloat16 model (inference.py --dtype bfloat16) is packed at every batch size on a CPU that
multiplies bfloat16 natively (gpt/capability.py): against what float32 does at 1 and 2 (an
input-major lm_head; the layers as they are), 1.40x at batch 1 and 1.41x at 2 (same model and
machine, whose oneDNN multiplies bfloat16 with AMX). On a CPU that would emulate bfloat16 (AVX2
only) oneDNN cannot pack it: its layers are used as they are (inference.py warns that float32
is faster there).
GPUs and autocast (which the copies would ignore) use the parameters as they are.

How the copies reach the blocks: `LanguageModel.hidden` takes a `linear` argument, the function
the blocks apply their linear layers with (`linear(layer, x)`; by default the layer itself), and
`DecodingWeights.linear` applies the layer's copy instead where it has one, so the same block code
runs either way. The decoding loop (gpt/model/generate.py) builds a `DecodingWeights` at the start
of one generate call and drops it at the end: nothing is stored on the model, a weight change
between two calls is seen at once, and the training loop knows nothing of these copies, which
cost up to the weights' own memory for the duration of the call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from gpt.capability import cpu_capability
from gpt.model.base import LanguageModel

FLOAT32_PACK_FROM = 4
"""The smallest batch of float32 sequences decoded through packed copies (module docstring)."""


def pack_from(dtype: torch.dtype) -> int | None:
    """The smallest batch decoded through packed copies of `dtype` weights on this CPU, or None
    where they are not packed: float32 from FLOAT32_PACK_FROM, bfloat16 from 1 where the CPU
    multiplies it natively, nothing else (float64 and float16 oneDNN cannot pack)."""
    if dtype == torch.float32:
        return FLOAT32_PACK_FROM
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


def packed(model: LanguageModel, batch_size: int) -> DecodingWeights:
    """oneDNN-packed copies of every linear weight of the blocks and of the lm_head."""
    layers: dict[nn.Linear, Projection] = {
        layer: PackedLinear(layer.weight, layer.bias, batch_size)
        for layer in model.blocks.modules()
        if isinstance(layer, nn.Linear)
    }
    return DecodingWeights(layers, PackedLinear(model.real_vocab_rows(), None, batch_size))


def decoding_weights(model: LanguageModel, batch_size: int) -> DecodingWeights:
    """The weights for decoding batch_size sequences with model: on CPU without autocast (which
    the copies would ignore), packed copies from the dtype's `pack_from` batch on and an
    input-major lm_head for one float32 sequence; the model's own layers otherwise (float64,
    which oneDNN cannot pack, and GPUs)."""
    weight = model.lm_head.weight
    if weight.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
        return DecodingWeights({}, model.logits)
    smallest = pack_from(weight.dtype)
    if smallest is not None and batch_size >= smallest and packing_available():
        return packed(model, batch_size)
    if batch_size == 1 and weight.dtype == torch.float32:
        return DecodingWeights({}, InputMajorLinear(model.real_vocab_rows()))
    return DecodingWeights({}, model.logits)
