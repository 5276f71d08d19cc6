"""MXFP4 (OCP microscaling FP4) weights as the published GPT-OSS checkpoints store them.

`*_blocks` uint8 [..., rows, G, 16] hold 32 e2m1 values per 16-byte block (low nibble = element 2j,
high nibble = element 2j+1, bit 3 the sign); `*_scales` uint8 [..., rows, G] hold one power-of-two
exponent per block, biased by 127. Blocks run along the reduction (input) dimension, so a dequantised
expert is a plain `nn.Linear` weight [out, in]. `dequantize` is the ops layer's (CUDA kernel on the
GPU, torch reference elsewhere); this module adds what only the model side needs.
"""
from __future__ import annotations

import torch

from mini_vllm.ops import dequant_mxfp4


def dequantize(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """blocks uint8 [..., R, G, 16] + scales uint8 [..., R, G] -> weight [..., R, G*32] in `dtype`."""
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise TypeError(f"MXFP4 blocks/scales must be uint8, got {blocks.dtype}/{scales.dtype}")
    return dequant_mxfp4(blocks, scales, dtype)


def random_mxfp4(
    shape_rows: tuple[int, ...], cols: int, scale_exp: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random packed weights [*shape_rows, cols] with per-block exponents around 2**scale_exp.

    Used by the tiny checkpoint writer: drawing codes directly (instead of quantising floats) keeps
    writing fast and bit-deterministic.
    """
    if cols % 32:
        raise ValueError(f"MXFP4 needs the reduction dim to be a multiple of 32, got {cols}")
    g = cols // 32
    blocks = torch.randint(0, 256, (*shape_rows, g, 16), generator=gen, dtype=torch.int32).to(torch.uint8)
    jitter = torch.randint(-1, 2, (*shape_rows, g), generator=gen, dtype=torch.int32)
    scales = (127 + scale_exp + jitter).to(torch.uint8)
    return blocks, scales
