"""GPT-α: a from-scratch PyTorch implementation of the GPT-2/GPT-3 training stack.

The public names are imported lazily, on first use, so that importing a light module such as
`gpt.data.prepare` (run in every data-preparation worker) does not import torch:

    >>> import gpt
    >>> gpt.model_preset("tiny").n_layer
    2
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it
_PUBLIC = {
    "GPT": "gpt.model.gpt2",
    "GPTConfig": "gpt.config",
    "model_preset": "gpt.config",
    "GPTTokeniser": "gpt.data.tokeniser",
    "TokeniserError": "gpt.data.bpe",
    "get_tokeniser": "gpt.data.tokeniser",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    """Import the module behind a public name when it is first asked for."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'gpt' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
