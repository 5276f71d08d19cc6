"""`fused_moe_mxfp4`: the GPT-OSS expert MLP for routed tokens in four launches, weights kept packed.

Why: a Python loop over experts costs one dense dequantise + two matmuls per expert hit (hundreds of
launches and a bf16 copy of every weight); here it is align -> gate_up(+SwiGLU) -> down(*weight) -> sum,
with the grid fixed by the shapes so the whole thing is CUDA-graph capturable (no host sync).
Tile sizes follow the token count: decode (few rows per expert) is memory-bound, so a small BLOCK_M
and enough N-tiles to fill the 132 SMs; prefill gets bigger M tiles so each weight tile is reused.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from .moe_align import moe_align_block_size
from .moe_gemm import moe_down_kernel, moe_gate_up_kernel, moe_sum_kernel
from .mxfp4 import SWIGLU_ALPHA, SWIGLU_LIMIT, MoeWeights


@dataclass(frozen=True)
class MoeConfig:
    """Tile sizes and launch knobs for both grouped GEMMs."""

    block_m: int = 16
    block_n: int = 64
    block_k: int = 128
    num_warps: int = 4
    num_stages: int = 3


def pick_config(num_tokens: int, top_k: int, num_experts: int) -> MoeConfig:
    """Heuristic tiles: rows per expert decide BLOCK_M (tl.dot needs >= 16)."""
    rows_per_expert = num_tokens * top_k / num_experts
    if rows_per_expert <= 16:
        return MoeConfig(block_m=16, block_n=64, block_k=128, num_warps=4, num_stages=4)
    if rows_per_expert <= 64:
        return MoeConfig(block_m=32, block_n=64, block_k=128, num_warps=4, num_stages=3)
    return MoeConfig(block_m=64, block_n=128, block_k=128, num_warps=8, num_stages=3)


def _check_inputs(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                  w: MoeWeights) -> None:
    w.validate()
    if x.dim() != 2 or x.shape[1] != w.hidden_size:
        raise ValueError(f"x must be [T, {w.hidden_size}], got {tuple(x.shape)}")
    if topk_ids.dim() != 2 or topk_ids.shape[0] != x.shape[0]:
        raise ValueError(f"topk_ids must be [T={x.shape[0]}, k], got {tuple(topk_ids.shape)}")
    if topk_weights.shape != topk_ids.shape:
        raise ValueError(f"topk_weights shape {tuple(topk_weights.shape)} != topk_ids shape "
                         f"{tuple(topk_ids.shape)}")
    if w.hidden_size % 32 or w.intermediate_size % 32:
        raise ValueError("hidden and intermediate sizes must be multiples of 32 (MXFP4 blocks)")


def fused_moe_mxfp4(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                    w: MoeWeights, config: MoeConfig | None = None,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """sum_j topk_weights[t, j] * Expert_{topk_ids[t, j]}(x[t]) for every token t -> [T, H] in x.dtype.

    Expert(x) = down(swiglu(gate_up(x) + b1)) + b2 with GPT-OSS's clamped, interleaved SwiGLU.
    topk_ids must hold distinct experts per token (as top-k routing gives). `out` ([T, H], x.dtype,
    contiguous) is written in full when given.
    """
    _check_inputs(x, topk_ids, topk_weights, w)
    t, k = topk_ids.shape
    h, inter = w.hidden_size, w.intermediate_size
    if out is None:
        out = torch.empty_like(x)
    elif out.shape != x.shape or out.dtype != x.dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {x.dtype} tensor of shape {tuple(x.shape)}")
    if t == 0:
        return out
    cfg = config or pick_config(t, k, w.num_experts)
    x = x.contiguous()
    sorted_ids, expert_ids, _ = moe_align_block_size(topk_ids, w.num_experts, cfg.block_m)
    num_slots = t * k
    grid_m = expert_ids.numel()
    launch = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)

    act = torch.empty((num_slots, inter), dtype=x.dtype, device=x.device)
    gu_bias = w.gate_up_bias if w.gate_up_bias is not None else x  # dummy pointer when absent
    moe_gate_up_kernel[(grid_m, triton.cdiv(inter, cfg.block_n))](
        x, w.gate_up_blocks, w.gate_up_scales, gu_bias, act, sorted_ids, expert_ids,
        num_slots, h, inter, x.stride(0), act.stride(0), SWIGLU_ALPHA, SWIGLU_LIMIT,
        TOP_K=k, HAS_BIAS=w.gate_up_bias is not None,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, **launch)

    per_slot = torch.empty((num_slots, h), dtype=torch.float32, device=x.device)
    dn_bias = w.down_bias if w.down_bias is not None else x
    moe_down_kernel[(grid_m, triton.cdiv(h, cfg.block_n))](
        act, w.down_blocks, w.down_scales, dn_bias, topk_weights.contiguous(), per_slot,
        sorted_ids, expert_ids, num_slots, inter, h, act.stride(0), per_slot.stride(0),
        HAS_BIAS=w.down_bias is not None,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, **launch)

    sum_block = min(1024, triton.next_power_of_2(h))
    moe_sum_kernel[(t, triton.cdiv(h, sum_block))](per_slot, out, h, TOP_K=k, BLOCK_N=sum_block)
    return out
