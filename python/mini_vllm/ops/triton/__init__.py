"""Triton kernels for the H100 fast path of GPT-OSS: MXFP4 fused MoE and paged attention.

Why a separate package: these kernels need Triton and (for speed) a GPU, while the rest of
`mini_vllm.ops` must import on any CPU machine; importing this package is explicit and optional.
On CPU they run only inside `interpret.interpreted()` (tests). See docs/triton-kernels.md.
"""
from __future__ import annotations

from .fused_moe import GemmTiles, MoeConfig, fused_moe_mxfp4, pick_config
from .moe_align import moe_align_block_size
from .mxfp4 import MoeWeights
from .paged_attention import paged_attention

__all__ = ["GemmTiles", "MoeConfig", "MoeWeights", "fused_moe_mxfp4", "moe_align_block_size", "paged_attention",
           "pick_config"]
