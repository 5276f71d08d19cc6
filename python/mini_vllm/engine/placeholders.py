"""Placeholder input ids of async scheduling (engine/async_step.py): -(j+1) stands for the j-th id sampled
by the previous step, which is still on the device when the next step's inputs are built."""
from __future__ import annotations

import torch


def resolve_placeholders(ids: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
    """ids (int64) with placeholders -(j+1) -> the same ids with prev[j] in their place (no host sync)."""
    if prev is None or prev.numel() == 0:
        return ids
    src = (-ids - 1).clamp(0, prev.numel() - 1)
    return torch.where(ids < 0, prev.to(ids.dtype).index_select(0, src), ids)
