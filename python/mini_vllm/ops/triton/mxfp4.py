"""MXFP4 expert weights: the container the Triton MoE kernels read, plus a plain-torch decoder.

Why here: the fused MoE kernels decode MXFP4 *inside* the GEMM, so they need the packed tensors
exactly as the published GPT-OSS checkpoint stores them (no repacking step at load time). This module
names that layout once (`MoeWeights`), decodes it in torch for the reference path, and makes random
weights of the same layout for tests and the device benchmark.

Layout (HF `model.layers.N.mlp.experts.*`), out-features major, blocks along the reduction dim:
  gate_up_proj_blocks uint8 [E, 2I, H/32, 16]  gate_up_proj_scales uint8 [E, 2I, H/32]  bias [E, 2I]
  down_proj_blocks    uint8 [E, H,  I/32, 16]  down_proj_scales    uint8 [E, H,  I/32]  bias [E, H]
A 16-byte block holds 32 e2m1 values: low nibble = element 2j, high nibble = element 2j+1; nibble
bit 3 is the sign, bits 0-2 index [0, .5, 1, 1.5, 2, 3, 4, 6]; each block is scaled by 2^(s-127).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

BLOCK = 32  # e2m1 values per scale
SWIGLU_ALPHA = 1.702  # GPT-OSS expert activation: g * sigmoid(alpha * g) * (l + 1)
SWIGLU_LIMIT = 7.0  # gate clamped to <= limit, linear to [-limit, limit]


@dataclass
class MoeWeights:
    """Packed MXFP4 weights of one MoE layer (all experts), as stored in the checkpoint."""

    gate_up_blocks: torch.Tensor  # uint8 [E, 2I, H/32, 16]
    gate_up_scales: torch.Tensor  # uint8 [E, 2I, H/32]
    gate_up_bias: torch.Tensor | None  # [E, 2I]
    down_blocks: torch.Tensor  # uint8 [E, H, I/32, 16]
    down_scales: torch.Tensor  # uint8 [E, H, I/32]
    down_bias: torch.Tensor | None  # [E, H]

    @property
    def num_experts(self) -> int:
        return self.gate_up_blocks.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.down_blocks.shape[1]

    @property
    def intermediate_size(self) -> int:
        return self.gate_up_blocks.shape[1] // 2

    def validate(self) -> None:
        """Raise ValueError with a readable message when shapes or dtypes do not fit together."""
        e, two_i, hb, sixteen = self.gate_up_blocks.shape
        h, i = self.hidden_size, self.intermediate_size
        expect = {
            "gate_up_blocks": (self.gate_up_blocks, (e, 2 * i, h // BLOCK, 16)),
            "gate_up_scales": (self.gate_up_scales, (e, 2 * i, h // BLOCK)),
            "down_blocks": (self.down_blocks, (e, h, i // BLOCK, 16)),
            "down_scales": (self.down_scales, (e, h, i // BLOCK)),
        }
        if sixteen != 16 or two_i % 2 or hb * BLOCK != h:
            raise ValueError(f"gate_up_blocks shape {tuple(self.gate_up_blocks.shape)} is not "
                             f"[E, 2I, H/32, 16] for H={h}")
        for name, (t, shape) in expect.items():
            if tuple(t.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape}")
            if t.dtype != torch.uint8:
                raise ValueError(f"{name} must be uint8, got {t.dtype}")
        for name, t, shape in (("gate_up_bias", self.gate_up_bias, (e, 2 * i)),
                               ("down_bias", self.down_bias, (e, h))):
            if t is not None and tuple(t.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape}")

    def nbytes_per_expert(self) -> int:
        """Bytes the kernels read for one expert (blocks + scales + biases)."""
        total = 0
        for t in (self.gate_up_blocks, self.gate_up_scales, self.gate_up_bias,
                  self.down_blocks, self.down_scales, self.down_bias):
            if t is not None:
                total += t[0].numel() * t.element_size()
        return total


def random_moe_weights(num_experts: int, hidden: int, intermediate: int, *, device="cpu",
                       bias_dtype: torch.dtype = torch.float32, scale_spread: int = 3,
                       generator: torch.Generator | None = None) -> MoeWeights:
    """Random packed weights (uniform bytes, scales 127 +- scale_spread) with the checkpoint layout."""
    def u8(*shape, lo=0, hi=256):
        return torch.randint(lo, hi, shape, dtype=torch.uint8, generator=generator).to(device)

    def bias(*shape):
        return (torch.randn(shape, generator=generator) * 0.5).to(bias_dtype).to(device)

    e, h, i = num_experts, hidden, intermediate
    return MoeWeights(
        gate_up_blocks=u8(e, 2 * i, h // BLOCK, 16),
        gate_up_scales=u8(e, 2 * i, h // BLOCK, lo=127 - scale_spread, hi=128 + scale_spread),
        gate_up_bias=bias(e, 2 * i),
        down_blocks=u8(e, h, i // BLOCK, 16),
        down_scales=u8(e, h, i // BLOCK, lo=127 - scale_spread, hi=128 + scale_spread),
        down_bias=bias(e, h),
    )
