"""Swap-AB grouped MXFP4 MoE GEMM (out^T = W . x^T) for the batch-16..1024 decode regime.

Why: at T = 32..512 routed tokens each expert gets only ~4..64 rows, but Hopper's MMA wants M >= 64
per warpgroup. The grouped GEMM (moe_gemm.py) puts routed rows on M, so a BLOCK_M = 16/32 tile
wastes most of every MMA and keeps too few weight bytes in flight. Here the roles are swapped: a
program owns BLOCK_N_W weight rows (output features - the MMA's M, 64/128, always full) and
BLOCK_T routed rows of one expert (the MMA's N, 16/32/64 - any multiple of 8 is a legal wgmma N),
K = the reduction dim. The routing is the same `moe_align_block_size` grouping with
block_m = BLOCK_T; the packed weights are read exactly as the checkpoint stores them.

The K loop is moe_gemm._mxfp4_gemm with SWAP=True (one copy of the loads/decoders): with
DECODE_DOT_SCALED the fp4 operand is the LEFT operand of `tl.dot_scaled` (upcast in registers, which
is where wgmma's A operand may live); DECODE_BITS decodes to the activation dtype and `tl.dot`s.
The accumulator [weight rows, routed rows] is transposed once in the epilogue, so the grouped
GEMM's epilogues (bias + clamped SwiGLU; bias * routing weight) are reused unchanged.

The kernels take exactly the grouped kernels' arguments (BLOCK_M = BLOCK_T, BLOCK_N = output
features per program, gate_up's tile holds 2 * BLOCK_N interleaved gate/linear rows) and the same
grid (blocks of routed rows, cdiv(N, BLOCK_N)), so fused_moe.py launches either one.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .moe_gemm import _mxfp4_gemm, _tile, down_epilogue, gate_up_epilogue


@triton.jit
def moe_gate_up_swap_kernel(x_ptr, blk_ptr, scl_ptr, bias_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr,
                            num_slots, K, K_HALF, K_GROUPS, I, stride_x, stride_out, alpha, limit,
                            TOP_K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
                            DECODE: tl.constexpr):
    """out[slot, n] = swiglu(W_e[2n] . x[slot // k] + b, W_e[2n+1] . x + b): acc is [2BN, BM]."""
    expert, slots, row_ok = _tile(sorted_ids_ptr, expert_ids_ptr, num_slots, BLOCK_M)
    if expert < 0:
        return
    rows2 = tl.program_id(1) * (2 * BLOCK_N) + tl.arange(0, 2 * BLOCK_N)  # gate/linear interleaved
    rows2_ok = rows2 < 2 * I
    eb = blk_ptr + expert * (2 * I) * (K_HALF // 4)  # int32 words
    es = scl_ptr + expert * (2 * I) * K_GROUPS
    acc = tl.zeros((2 * BLOCK_N, BLOCK_M), dtype=tl.float32)
    acc = _mxfp4_gemm(acc, x_ptr, slots // TOP_K, row_ok, stride_x, eb, es, rows2, rows2_ok,
                      K, K_HALF, K_GROUPS, K_HALF // 4, K_GROUPS, 2 * BLOCK_N, BLOCK_K, EVEN_K, DECODE,
                      SWAP=True)
    gate_up_epilogue(tl.trans(acc), bias_ptr, out_ptr, expert, slots, row_ok, rows2, rows2_ok, I,
                     stride_out, alpha, limit, HAS_BIAS, BLOCK_M, BLOCK_N)


@triton.jit
def moe_down_swap_kernel(h_ptr, blk_ptr, scl_ptr, bias_ptr, w_ptr, out_ptr, sorted_ids_ptr,
                         expert_ids_ptr, num_slots, K, K_HALF, K_GROUPS, N, stride_h, stride_out,
                         HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr, DECODE: tl.constexpr):
    """out[slot, n] = topk_weight[slot] * (W_e[n] . h[slot] + b[n]), fp32: acc is [BN, BM]."""
    expert, slots, row_ok = _tile(sorted_ids_ptr, expert_ids_ptr, num_slots, BLOCK_M)
    if expert < 0:
        return
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    eb = blk_ptr + expert * N * (K_HALF // 4)  # int32 words
    es = scl_ptr + expert * N * K_GROUPS
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    acc = _mxfp4_gemm(acc, h_ptr, slots, row_ok, stride_h, eb, es, n, n_ok,
                      K, K_HALF, K_GROUPS, K_HALF // 4, K_GROUPS, BLOCK_N, BLOCK_K, EVEN_K, DECODE,
                      SWAP=True)
    down_epilogue(tl.trans(acc), bias_ptr, w_ptr, out_ptr, expert, slots, row_ok, slots, n, n_ok, N,
                  stride_out, HAS_BIAS)

