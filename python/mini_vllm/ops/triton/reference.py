"""Plain-torch references for the Triton MoE kernels: the same math, written the obvious way.

(The paged-attention reference is ops/reference.py's `paged_attention`, the one every attention path is
checked against; call it with compute_dtype=torch.float64 for the interpreter tests.)

Why a separate module: tests (interpreter, CPU) and the device benchmark (as the peer the kernels are
timed against) both need them, and they must not share code paths with the kernels they check.
Computation runs in `compute_dtype` (float64 in tests; bf16 on the GPU for the timed peer).
"""
from __future__ import annotations

import torch

from ..reference import dequant_mxfp4 as dequant_mxfp4_reference
from .mxfp4 import SWIGLU_ALPHA, SWIGLU_LIMIT, MoeWeights


def swiglu_gpt_oss(gate_up: torch.Tensor) -> torch.Tensor:
    """Interleaved clamped SwiGLU: even columns gate, odd linear."""
    gate = gate_up[..., 0::2].clamp(max=SWIGLU_LIMIT)
    lin = gate_up[..., 1::2].clamp(-SWIGLU_LIMIT, SWIGLU_LIMIT)
    return gate * torch.sigmoid(SWIGLU_ALPHA * gate) * (lin + 1)


def fused_moe_reference(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                        w: MoeWeights, compute_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Loop over experts: dequantise each hit expert, two matmuls, weighted sum -> [T, H] in x.dtype."""
    out = torch.zeros(x.shape, dtype=compute_dtype, device=x.device)
    xc = x.to(compute_dtype)
    for e in torch.unique(topk_ids).tolist():
        tok, slot = torch.nonzero(topk_ids == e, as_tuple=True)
        w1 = dequant_mxfp4_reference(w.gate_up_blocks[e], w.gate_up_scales[e], compute_dtype)
        w2 = dequant_mxfp4_reference(w.down_blocks[e], w.down_scales[e], compute_dtype)
        h = xc[tok] @ w1.T
        if w.gate_up_bias is not None:
            h = h + w.gate_up_bias[e].to(compute_dtype)
        y = swiglu_gpt_oss(h) @ w2.T
        if w.down_bias is not None:
            y = y + w.down_bias[e].to(compute_dtype)
        out.index_add_(0, tok, y * topk_weights[tok, slot].to(compute_dtype)[:, None])
    return out.to(x.dtype)
