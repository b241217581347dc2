"""GPT-α: a from-scratch PyTorch implementation of the GPT-2/GPT-3 training stack."""

from gpt.config import GPTConfig, model_preset
from gpt.model import GPT
from gpt.tokeniser import GPTTokeniser, TokeniserError, get_tokeniser

__all__ = ["GPT", "GPTConfig", "GPTTokeniser", "TokeniserError", "get_tokeniser", "model_preset"]
