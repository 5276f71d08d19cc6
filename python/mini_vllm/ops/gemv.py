"""Decode-sized MXFP4 MoE GEMVs on the tensor cores (kernels/gemv_mma.cu) and the MoE sum fused into the norm.

Why: at a decode step of 2..8 tokens the Triton MoE GEMV re-reads an expert for every slot routed to it
and needs an align-free but per-slot launch grid plus a third launch to add the k experts. Here:
  - `moe_gemv_slots(x, ids, weights, w)`: gate_up(+SwiGLU) and down(*routing weight) in two launches, one
    fp32 row per routed slot (each distinct expert's weights read once for all its tokens: an mma with
    N = 8 columns costs what one token does);
  - `moe_sum_add_rms_norm(rows, r, residual, weight)`: the per-token sum of those rows, the residual add
    and the next RMSNorm in one launch (also for the Triton path's per-slot rows).
Every function falls back to torch (or returns None where the caller has its own path) for inputs the
kernels do not take; `CudaForward` runs them once at start-up against torch (ops/selfcheck.py). Measured
(H100, call 16): 1.2-1.65x the Triton MoE at T = 2..8 (batch-8 decode graph 7.24 -> 4.03 ms), but not
better in the batch-1 graph - T = 1 keeps Triton's GEMV (GEMV_MIN_TOKENS). A dense bf16 mode for qkv /
o_proj lost to cuBLAS 2-3x (too few warps in flight) and was removed.
"""
from __future__ import annotations

import torch

from . import reference
from .ext import try_load
from .triton.mxfp4 import SWIGLU_ALPHA, SWIGLU_LIMIT, MoeWeights

GEMV_MAX_TOKENS = 8        # mma N: one decode step of up to 8 tokens costs what one token does
GEMV_MIN_TOKENS = 2        # at 1 token the Triton GEMV measured at least as fast in the decode graph
MAX_K = 12288              # the kernels stage up to 8 activation rows of K bf16 in shared memory (192 KB)


def _mod(*tensors: torch.Tensor):
    return try_load("mini_vllm_kernels") if all(t.is_cuda for t in tensors) else None


def _stream() -> int:
    return torch.cuda.current_stream().cuda_stream


def _aligned(t: torch.Tensor) -> bool:
    return t.data_ptr() % 16 == 0


def k_split_for(n: int, tokens: int) -> int:
    """Warps per 16-row tile (K split in shared memory): more warps in flight when few experts are hit."""
    tiles = n // 16
    return 4 if tokens <= 2 and tiles < 256 else 2 if tokens <= 2 or tiles < 256 else 1


def _big_scale(w: MoeWeights) -> tuple[int, int]:
    """(gate_up, down): 1 when some scale byte exceeds 128 (the kernel then takes two multiplies); cached."""
    cached = getattr(w, "_mv_big_scale", None)
    if cached is None:
        cached = (int(bool((w.gate_up_scales > 128).any())), int(bool((w.down_scales > 128).any())))
        w._mv_big_scale = cached  # type: ignore[attr-defined]
    return cached


def moe_gemv_ok(x: torch.Tensor, topk_ids: torch.Tensor, w: MoeWeights) -> bool:
    """Whether the MXFP4 GEMV kernels take these inputs (device aside)."""
    t, k = topk_ids.shape if topk_ids.dim() == 2 else (0, 0)
    h, inter = w.hidden_size, w.intermediate_size
    biases = all(b is None or (b.dtype == torch.bfloat16 and b.is_contiguous())
                 for b in (w.gate_up_bias, w.down_bias))
    return (x.dim() == 2 and 1 <= t <= GEMV_MAX_TOKENS and t * k <= 32 and x.shape == (t, h)
            and x.dtype == torch.bfloat16 and x.stride(1) == 1 and x.stride(0) % 8 == 0 and _aligned(x)
            and topk_ids.dtype == torch.int32 and topk_ids.is_contiguous() and biases
            and h % 32 == 0 and inter % 32 == 0 and h <= MAX_K and inter <= MAX_K and (2 * inter) % 16 == 0
            and all(tt.is_contiguous() and _aligned(tt) for tt in (w.gate_up_blocks, w.down_blocks))
            and w.gate_up_scales.is_contiguous() and w.down_scales.is_contiguous())


def moe_gemv_slots(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                   w: MoeWeights) -> torch.Tensor | None:
    """fp32 [T*k, H]: row t*k + j = topk_weights[t, j] * Expert_{topk_ids[t, j]}(x[t]) (bias included),
    by the two GEMV launches; None when the kernels do not take these inputs (use the Triton path)."""
    mod = _mod(x, topk_ids, w.gate_up_blocks)
    if mod is None or not moe_gemv_ok(x, topk_ids, w):
        return None
    t, k = topk_ids.shape
    h, inter = w.hidden_size, w.intermediate_size
    big_gu, big_dn = _big_scale(w)
    act = torch.empty(t * k, inter, dtype=x.dtype, device=x.device)
    rows = torch.empty(t * k, h, dtype=torch.float32, device=x.device)
    weights = topk_weights.float().contiguous()
    mod.call("mv_moe_gemv_gate_up", act.data_ptr(), act.stride(0), x.data_ptr(), x.stride(0),
             w.gate_up_blocks.data_ptr(), w.gate_up_scales.data_ptr(),
             None if w.gate_up_bias is None else w.gate_up_bias.data_ptr(), topk_ids.data_ptr(), t, k, 2 * inter,
             h, SWIGLU_ALPHA, SWIGLU_LIMIT, k_split_for(2 * inter, t), big_gu, _stream())
    mod.call("mv_moe_gemv_down", rows.data_ptr(), rows.stride(0), act.data_ptr(), act.stride(0),
             w.down_blocks.data_ptr(), w.down_scales.data_ptr(), None if w.down_bias is None else w.down_bias.data_ptr(),
             topk_ids.data_ptr(), weights.data_ptr(), t, k, h, inter, k_split_for(h, t), big_dn, _stream())
    return rows


def moe_sum_add_rms_norm(rows: torch.Tensor, rows_per_token: int, residual: torch.Tensor, weight: torch.Tensor,
                         eps: float = 1e-5, out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """y = bf16(sum of each token's `rows_per_token` fp32 rows); residual <- y + residual (in place);
    returns (rms_norm(residual) * weight, residual). One launch on the kernel path."""
    t, h = residual.shape
    if out is None:
        out = torch.empty_like(residual)
    mod = _mod(rows, residual, weight)
    ok = (mod is not None and rows.dtype == torch.float32 and rows.is_contiguous() and _aligned(rows)
          and tuple(rows.shape) == (t * rows_per_token, h) and 1 <= rows_per_token <= 64
          and all(x.dtype == torch.bfloat16 and x.is_contiguous() and _aligned(x) for x in (residual, weight, out))
          and h % 8 == 0)
    if not ok:
        y = rows.view(t, rows_per_token, h).sum(1).to(residual.dtype)
        reference.fused_add_rms_norm(y, residual, weight, eps)
        return out.copy_(y), residual
    mod.call("mv_moe_sum_add_rms_norm", out.data_ptr(), residual.data_ptr(), rows.data_ptr(), weight.data_ptr(), t,
             rows_per_token, h, eps, _stream())
    return out, residual
