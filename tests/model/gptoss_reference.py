"""Helpers shared by the model tests (a uniquely named module: `conftest` is ambiguous across test dirs)."""
from __future__ import annotations

import torch

# prompt lengths: below a block, across blocks, and past the sliding window (16) several times
PROMPT_LENS = (5, 23, 40, 61)
GEN_TOKENS = 40


def hf_logits(hf_model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(torch.tensor([ids])).logits[0].float()
