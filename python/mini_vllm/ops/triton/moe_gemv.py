"""Decode-sized MXFP4 MoE: GEMV kernels (fp32 FMA, no tensor cores) for a handful of routed slots.

Why: at T <= 8 tokens (<= 32 routed slots) the grouped GEMM's 16-row MMA tile holds one real row, so
it pays for tile staging and the MMA while the weight stream - the only thing that matters - has too
few bytes in flight. Here a program = BLOCK_M routed slots of ONE expert (BLOCK_M = 1: slot = program,
no align launch) x BLOCK_N output features x one K-split, and everything is sized for HBM:
  - weights load as int32 words, four words = one 16-byte MXFP4 block per thread-vector, rows
    contiguous along K (the checkpoint layout viewed as int32: no repacking);
  - word q of a 32-value group holds elements 8q..8q+7 (nibble j = element 8q+j), so the matching
    activations are 8 contiguous values: x loads as [C, 8] vectors and is split in registers;
  - nibble -> fp32 in 3 integer ops: shift the nibble to bits 31..28, arithmetic-shift right by 6
    (sign stays in bit 31, e1 e0 m land in bits 24..22), mask 0x81C00000. That is e2m1 x 2^-126
    exactly (code 1 = 0.5 becomes the fp32 denormal 2^-127; sm_90 FMAs keep fp32 denormals), so a
    group's dot is multiplied by 2^126 and then by its scale 2^(s-127) (exponent bits), once per 32
    values;
  - fp32 FMA reductions along K, per 32-value group then across groups (no tl.dot);
  - down may split K (SPLIT_K programs per tile): each split writes its own fp32 row
    (slot * SPLIT_K + split) and the existing per-token sum adds k * SPLIT_K rows - deterministic,
    no atomics, no zeroed buffer, grid fixed by the shapes (CUDA-graph capturable).
Epilogues are the grouped GEMM's (moe_gemm.gate_up_epilogue / down_epilogue).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .moe_gemm import down_epilogue, gate_up_epilogue

SIGN_MAG = tl.constexpr(-2118123520)  # 0x81C00000 as int32: fp32 sign + exponent bits 1..0 + mantissa bit 22
UNBIAS = tl.constexpr(2.0 ** 126)  # decoded nibbles are e2m1 x 2^-126


@triton.jit
def _nib(w, J: tl.constexpr):
    """fp32 (x 2^-126) of nibble J (bits 4J..4J+3) of every int32 word in w."""
    if J == 7:
        v = w >> 6
    else:
        v = (w << (28 - 4 * J)) >> 6
    return (v & SIGN_MAG).to(tl.float32, bitcast=True)


@triton.jit
def _word_dot(w, x_ptrs, x_ok, BLOCK_M: tl.constexpr, WORDS: tl.constexpr):
    """sum_j nib_j(w[r, c]) * x[m, 8c + j] -> [BLOCK_M, R, WORDS]; x_ptrs [BM, 1, C] -> element 8c."""
    acc = _nib(w, 0)[None, :, :] * tl.load(x_ptrs, mask=x_ok, other=0.0).to(tl.float32)
    acc += _nib(w, 1)[None, :, :] * tl.load(x_ptrs + 1, mask=x_ok, other=0.0).to(tl.float32)
    acc += _nib(w, 2)[None, :, :] * tl.load(x_ptrs + 2, mask=x_ok, other=0.0).to(tl.float32)
    acc += _nib(w, 3)[None, :, :] * tl.load(x_ptrs + 3, mask=x_ok, other=0.0).to(tl.float32)
    acc += _nib(w, 4)[None, :, :] * tl.load(x_ptrs + 4, mask=x_ok, other=0.0).to(tl.float32)
    acc += _nib(w, 5)[None, :, :] * tl.load(x_ptrs + 5, mask=x_ok, other=0.0).to(tl.float32)
    acc += _nib(w, 6)[None, :, :] * tl.load(x_ptrs + 6, mask=x_ok, other=0.0).to(tl.float32)
    acc += _nib(w, 7)[None, :, :] * tl.load(x_ptrs + 7, mask=x_ok, other=0.0).to(tl.float32)
    return acc


@triton.jit
def _gemv(acc, a_ptr, a_rows, row_ok, stride_a, w_ptr, s_ptr, n_rows, n_ok, g_lo, g_hi,
          K_WORDS, K_GROUPS, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, GROUPS: tl.constexpr):
    """acc[BM, R] += A[a_rows, groups g_lo..g_hi) . W[n_rows, same]; W as int32 words [N, K/8]."""
    WORDS: tl.constexpr = 4 * GROUPS
    c = tl.arange(0, WORDS)
    a_base = a_ptr + a_rows.to(tl.int64)[:, None, None] * stride_a + (8 * c)[None, None, :]
    w_base = w_ptr + n_rows.to(tl.int64)[:, None] * K_WORDS + c[None, :]
    s_base = s_ptr + n_rows.to(tl.int64)[:, None] * K_GROUPS + (c // 4)[None, :]
    part = tl.zeros((BLOCK_M, BLOCK_R, WORDS), dtype=tl.float32)  # per word: reduced once, at the end
    for g0 in range(g_lo, g_hi, GROUPS):
        c_ok = g0 + c // 4 < g_hi
        wd = tl.load(w_base + 4 * g0, mask=n_ok[:, None] & c_ok[None, :], other=0)
        sc = tl.load(s_base + g0, mask=n_ok[:, None] & c_ok[None, :], other=0)
        dot = _word_dot(wd, a_base + 32 * g0, row_ok[:, None, None] & c_ok[None, None, :],
                        BLOCK_M, WORDS) * UNBIAS
        part += dot * (sc.to(tl.int32) << 23).to(tl.float32, bitcast=True)[None, :, :]  # 2^(s-127)
    return acc + tl.sum(part, axis=2)


@triton.jit
def _slots(sorted_ids_ptr, expert_ids_ptr, num_slots, BLOCK_M: tl.constexpr, DIRECT: tl.constexpr):
    """(expert, slots [BM], ok). DIRECT (BLOCK_M = 1): expert_ids_ptr is topk_ids flat, slot = pid."""
    pid = tl.program_id(0)
    if DIRECT:
        slots = pid + tl.arange(0, BLOCK_M)
        expert = tl.load(expert_ids_ptr + pid).to(tl.int64)
    else:
        slots = tl.load(sorted_ids_ptr + pid * BLOCK_M + tl.arange(0, BLOCK_M))
        expert = tl.load(expert_ids_ptr + pid).to(tl.int64)
    return expert, slots, slots < num_slots


@triton.jit
def moe_gate_up_gemv_kernel(x_ptr, blk_ptr, scl_ptr, bias_ptr, out_ptr, sorted_ids_ptr,
                            expert_ids_ptr, num_slots, K_WORDS, K_GROUPS, I, stride_x, stride_out,
                            alpha, limit, TOP_K: tl.constexpr, HAS_BIAS: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUPS: tl.constexpr,
                            DIRECT: tl.constexpr):
    """act[slot, n] = swiglu(x[slot // k] . W_e[2n] + b, x . W_e[2n+1] + b) for BLOCK_N columns."""
    expert, slots, row_ok = _slots(sorted_ids_ptr, expert_ids_ptr, num_slots, BLOCK_M, DIRECT)
    if expert < 0:
        return
    rows2 = tl.program_id(1) * (2 * BLOCK_N) + tl.arange(0, 2 * BLOCK_N)
    rows2_ok = rows2 < 2 * I
    acc = tl.zeros((BLOCK_M, 2 * BLOCK_N), dtype=tl.float32)
    acc = _gemv(acc, x_ptr, slots // TOP_K, row_ok, stride_x, blk_ptr + expert * (2 * I) * K_WORDS,
                scl_ptr + expert * (2 * I) * K_GROUPS, rows2, rows2_ok, 0, K_GROUPS, K_WORDS,
                K_GROUPS, BLOCK_M, 2 * BLOCK_N, GROUPS)
    gate_up_epilogue(acc, bias_ptr, out_ptr, expert, slots, row_ok, rows2, rows2_ok, I, stride_out,
                     alpha, limit, HAS_BIAS, BLOCK_M, BLOCK_N)


@triton.jit
def moe_down_gemv_kernel(h_ptr, blk_ptr, scl_ptr, bias_ptr, w_ptr, out_ptr, sorted_ids_ptr,
                         expert_ids_ptr, num_slots, K_WORDS, K_GROUPS, N, stride_h, stride_out,
                         HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         GROUPS: tl.constexpr, SPLIT_K: tl.constexpr, DIRECT: tl.constexpr):
    """out[slot * SPLIT_K + split, n] = weight[slot] * (h[slot] . W_e[n] over this split's K (+ b[n]
    in split 0)), fp32."""
    expert, slots, row_ok = _slots(sorted_ids_ptr, expert_ids_ptr, num_slots, BLOCK_M, DIRECT)
    if expert < 0:
        return
    split = tl.program_id(2)
    per_split = tl.cdiv(K_GROUPS, SPLIT_K)
    g_lo = split * per_split
    g_hi = tl.minimum(g_lo + per_split, K_GROUPS)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc = _gemv(acc, h_ptr, slots, row_ok, stride_h, blk_ptr + expert * N * K_WORDS,
                scl_ptr + expert * N * K_GROUPS, n, n_ok, g_lo, g_hi, K_WORDS, K_GROUPS,
                BLOCK_M, BLOCK_N, GROUPS)
    bias_ok = n < tl.where(split == 0, N, 0)  # only split 0 adds the bias
    down_epilogue(acc, bias_ptr, w_ptr, out_ptr, expert, slots, row_ok, slots * SPLIT_K + split, n,
                  bias_ok, N, stride_out, HAS_BIAS)
