"""MXFP4 (OCP microscaling FP4) weights: dequantise on demand, never the whole model.

Layout of the published GPT-OSS checkpoints: `*_blocks` uint8 [..., rows, G, 16] hold 32 e2m1 values
per 16-byte block (low nibble = element 2j, high nibble = element 2j+1, bit 3 the sign); `*_scales`
uint8 [..., rows, G] hold one power-of-two exponent per block, biased by 127. Blocks run along the
reduction (input) dimension, so a dequantised expert is a plain `nn.Linear` weight [out, in].

The expert weights stay packed in memory (4.25 bits per weight); a forward step expands only the
experts it routes tokens to, transiently, through one 256-entry byte -> (lo, hi) lookup table.
"""
from __future__ import annotations

import torch

FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)

_PAIR_LUT: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}


def _pair_lut(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[256, 2]: byte -> (value of low nibble, value of high nibble)."""
    key = (dtype, device)
    lut = _PAIR_LUT.get(key)
    if lut is None:
        vals = torch.tensor(FP4_VALUES, dtype=torch.float32)
        byte = torch.arange(256)
        lut = torch.stack([vals[byte & 0x0F], vals[byte >> 4]], dim=-1).to(dtype=dtype, device=device)
        _PAIR_LUT[key] = lut
    return lut


def dequantize(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """blocks uint8 [..., R, G, 16] + scales uint8 [..., R, G] -> weight [..., R, G*32] in `dtype`."""
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise TypeError(f"MXFP4 blocks/scales must be uint8, got {blocks.dtype}/{scales.dtype}")
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != 16:
        raise ValueError(f"MXFP4 shape mismatch: blocks {tuple(blocks.shape)} vs scales {tuple(scales.shape)}")
    vals = torch.nn.functional.embedding(blocks.int(), _pair_lut(dtype, blocks.device))   # [..., R, G, 16, 2]
    exp = torch.exp2(scales.to(torch.float32) - 127.0).to(dtype)       # exact powers of two
    out = vals.reshape(*blocks.shape[:-1], 32) * exp.unsqueeze(-1)
    return out.reshape(*blocks.shape[:-2], blocks.shape[-2] * 32)


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
