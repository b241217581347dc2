"""The model families by name: `GPTConfig.arch` -> the class that builds it.

>>> from gpt.config import model_preset
>>> type(build_model(model_preset("modern-tiny"))).__name__
'Qwen3'
"""

from __future__ import annotations

from gpt.config import GPTConfig
from gpt.model.base import LanguageModel
from gpt.model.gpt2 import GPT
from gpt.model.qwen3 import Qwen3

FAMILIES: dict[str, type[LanguageModel]] = {"gpt2": GPT, "qwen3": Qwen3}


def build_model(config: GPTConfig) -> LanguageModel:
    """A freshly initialised model of config's family (arch)."""
    return FAMILIES[config.arch](config)
