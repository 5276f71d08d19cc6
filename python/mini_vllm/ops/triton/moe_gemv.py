"""Decode-sized MXFP4 MoE: GEMV kernels (fp32 FMA, no tensor cores) for a handful of routed slots.

Why: at T <= 8 tokens (<= 32 routed slots) the grouped GEMM's 16-row MMA tile holds one real row, so
it pays for tile staging and the MMA while the weight stream - the only thing that matters - has too
few bytes in flight. Here a program = BLOCK_M routed slots of ONE expert (BLOCK_M = 1: slot = program,
no align launch) x BLOCK_N output features x one K-split, and everything is sized for HBM:
  - a thread owns a weight row: per 32-value group it loads the group's 4 int32 words as ONE 16-byte
    vector (the checkpoint layout viewed as int32, no repacking; `tl.multiple_of` tells Triton rows
    start 16-byte aligned, which it cannot infer from K/8 = 360) and its scale byte;
  - word q of a group holds elements 8q..8q+7 (nibble j = element 8q+j): the activations load as a
    [BM, 1, 4, 8] tile - smaller than the CTA, so Triton gives it the weight tile's layout family and
    every lane reads the same 32 values (broadcast, L1) - and the product [BM, R, 4, 8] needs NO
    layout conversion (no shared memory, no bar.sync in the K loop; bench/moe_gemv_ptx.py counts it);
  - nibble -> fp32 in 3 integer ops: shift the nibble to bits 31..28, arithmetic-shift right by 6
    (sign stays in bit 31, e1 e0 m land in bits 24..22), mask 0x81C00000. That is e2m1 x 2^-126
    exactly (code 1 = 0.5 becomes the fp32 denormal 2^-127; sm_90 FMAs keep fp32 denormals); a
    word's dot is multiplied by 2^126, then by its group's scale 2^(s-127) (exponent bits);
  - GROUPS groups per loop iteration, unrolled: GROUPS independent 16-byte loads in flight per
    thread; block_n >= 32 x num_warps rows (gate_up: 2 x block_n) keeps every thread on its own row;
  - down may split K (SPLIT_K programs per tile): each split writes its own fp32 row
    (slot * SPLIT_K + split) and the existing per-token sum adds k * SPLIT_K rows - deterministic,
    no atomics, no zeroed buffer, grid fixed by the shapes (CUDA-graph capturable);
  - gate_up may split K too (at T=1 it has only ~175 weight rows = threads per SM): raw fp32 partial
    rows, then `moe_swiglu_combine_kernel` sums them in order, applies SwiGLU and stores `act`.
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
    """fp32 (x 2^-126) of nibble J (bits 4J..4J+3) of every int32 word in w: 3 integer ops."""
    if J == 7:
        v = w >> 6
    else:
        v = (w << (28 - 4 * J)) >> 6
    return (v & SIGN_MAG).to(tl.float32, bitcast=True)


@triton.jit
def _group_dot(w_ptrs, s_ptrs, x_ptrs, w_ok, s_ok):
    """[BM, R] dot of one 32-value group per row: w_ptrs [1, R, 4] -> the group's 4 int32 words
    (one 16-byte vector per row), s_ptrs [1, R, 1] -> its scale byte, x_ptrs [BM, 1, 4] -> element
    8q of word q's 8 activations (nibble j = element 8q + j; always in bounds, so unmasked)."""
    wd = tl.load(w_ptrs, mask=w_ok, other=0)
    sc = tl.load(s_ptrs, mask=s_ok, other=0)
    words = _nib(wd, 0) * tl.load(x_ptrs).to(tl.float32)  # [BM, R, 4]: one FMA chain per word
    words += _nib(wd, 1) * tl.load(x_ptrs + 1).to(tl.float32)
    words += _nib(wd, 2) * tl.load(x_ptrs + 2).to(tl.float32)
    words += _nib(wd, 3) * tl.load(x_ptrs + 3).to(tl.float32)
    words += _nib(wd, 4) * tl.load(x_ptrs + 4).to(tl.float32)
    words += _nib(wd, 5) * tl.load(x_ptrs + 5).to(tl.float32)
    words += _nib(wd, 6) * tl.load(x_ptrs + 6).to(tl.float32)
    words += _nib(wd, 7) * tl.load(x_ptrs + 7).to(tl.float32)
    scale = (sc.to(tl.int32) << 23).to(tl.float32, bitcast=True)  # [1, R, 1]: 2^(s-127)
    return tl.sum(words * UNBIAS * scale, axis=2)  # 2^126 first: no denormal partials


@triton.jit
def _gemv(acc, a_ptr, a_rows, row_ok, stride_a, w_ptr, s_ptr, n_rows, n_ok, g_lo, g_hi,
          K_WORDS, K_GROUPS, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, GROUPS: tl.constexpr):
    """acc[BM, R] += A[a_rows, groups g_lo..g_hi) . W[n_rows, same]; W as int32 words [N, K/8].

    Layouts (no conversion in the K loop): the weight words load as a [1, R, 4] tile (a thread owns
    a row's 16-byte group), scales as [1, R, 1], activations per nibble as [BM, 1, 4]; the
    activation tiles are smaller than the CTA, so Triton gives them the weight tile's layout family
    (every lane of a warp reads the same values: broadcast L1 hits). GROUPS groups per iteration
    are separate tiles, unrolled: GROUPS 16-byte weight loads in flight per thread. Rows past the
    slots (row_ok false) and groups past g_hi read valid activations (row 0, group g_hi - 1) and
    contribute nothing: their weights load as 0 or their rows are never stored.
    """
    q = tl.arange(0, 4)
    # K_WORDS = K/8 is a multiple of 4 (K % 32 == 0): rows start 16-byte aligned -> v4 word loads
    w_rows = tl.multiple_of(n_rows.to(tl.int64) * K_WORDS, 4)
    w_base = w_ptr + w_rows[None, :, None] + q[None, None, :]
    w_ok = n_ok[None, :, None]
    s_base = s_ptr + n_rows[None, :, None] * K_GROUPS
    x_rows = tl.where(row_ok, a_rows, 0).to(tl.int64) * stride_a
    x_base = a_ptr + x_rows[:, None, None] + (8 * q)[None, None, :]
    part = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for g0 in range(g_lo, g_hi, GROUPS):
        for u in tl.static_range(GROUPS):
            g_ok = tl.full((1, 1, 1), g0 + u, tl.int32) < g_hi  # a tensor: the interpreter wants one
            g_x = tl.minimum(g0 + u, g_hi - 1)
            part += _group_dot(w_base + 4 * (g0 + u), s_base + (g0 + u), x_base + 32 * g_x,
                               w_ok & g_ok, w_ok & g_ok)
    return acc + part


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
def _k_split(K_GROUPS, SPLIT_K: tl.constexpr):
    """(split, first group, end group) of this program's K-split (grid axis 2)."""
    split = tl.program_id(2)
    per_split = tl.cdiv(K_GROUPS, SPLIT_K)
    g_lo = split * per_split
    return split, g_lo, tl.minimum(g_lo + per_split, K_GROUPS)


@triton.jit
def moe_gate_up_gemv_kernel(x_ptr, blk_ptr, scl_ptr, bias_ptr, out_ptr, sorted_ids_ptr,
                            expert_ids_ptr, num_slots, K_WORDS, K_GROUPS, I, stride_x, stride_out,
                            alpha, limit, TOP_K: tl.constexpr, HAS_BIAS: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUPS: tl.constexpr,
                            DIRECT: tl.constexpr, SPLIT_K: tl.constexpr = 1):
    """act[slot, n] = swiglu(x[slot // k] . W_e[2n] + b, x . W_e[2n+1] + b) for BLOCK_N columns.

    SPLIT_K > 1: out is fp32 [slots * SPLIT_K, 2I]; each split stores its raw partial row
    (slot * SPLIT_K + split, bias in split 0 only) and `moe_swiglu_combine_kernel` finishes.
    """
    expert, slots, row_ok = _slots(sorted_ids_ptr, expert_ids_ptr, num_slots, BLOCK_M, DIRECT)
    if expert < 0:
        return
    split, g_lo, g_hi = _k_split(K_GROUPS, SPLIT_K)
    rows2 = tl.program_id(1) * (2 * BLOCK_N) + tl.arange(0, 2 * BLOCK_N)
    rows2_ok = rows2 < 2 * I
    acc = tl.zeros((BLOCK_M, 2 * BLOCK_N), dtype=tl.float32)
    acc = _gemv(acc, x_ptr, slots // TOP_K, row_ok, stride_x, blk_ptr + expert * (2 * I) * K_WORDS,
                scl_ptr + expert * (2 * I) * K_GROUPS, rows2, rows2_ok, g_lo, g_hi, K_WORDS,
                K_GROUPS, BLOCK_M, 2 * BLOCK_N, GROUPS)
    if SPLIT_K == 1:
        gate_up_epilogue(acc, bias_ptr, out_ptr, expert, slots, row_ok, rows2, rows2_ok, I,
                         stride_out, alpha, limit, HAS_BIAS, BLOCK_M, BLOCK_N)
    else:
        if HAS_BIAS:
            bias_ok = rows2 < tl.where(split == 0, 2 * I, 0)  # only split 0 adds the bias
            acc += tl.load(bias_ptr + expert * (2 * I) + rows2, mask=bias_ok, other=0.0).to(tl.float32)[None, :]
        dst = out_ptr + (slots * SPLIT_K + split).to(tl.int64)[:, None] * stride_out + rows2[None, :]
        tl.store(dst, acc, mask=row_ok[:, None] & rows2_ok[None, :])


@triton.jit
def moe_swiglu_combine_kernel(part_ptr, out_ptr, I, stride_part, stride_out, alpha, limit,
                              SPLIT_K: tl.constexpr, BLOCK_N: tl.constexpr):
    """act[slot, n] = swiglu(sum over splits of part[slot * SPLIT_K + s, 2n..2n+1]) (the split gate_up's
    second launch; deterministic fixed-order sum). Grid (slots, cdiv(I, BLOCK_N))."""
    slot = tl.program_id(0)
    rows2 = tl.program_id(1) * (2 * BLOCK_N) + tl.arange(0, 2 * BLOCK_N)
    rows2_ok = rows2 < 2 * I
    acc = tl.zeros((1, 2 * BLOCK_N), dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):
        src = part_ptr + (slot * SPLIT_K + s).to(tl.int64) * stride_part + rows2
        acc += tl.load(src, mask=rows2_ok, other=0.0)[None, :]
    slots = slot + tl.arange(0, 1)
    gate_up_epilogue(acc, part_ptr, out_ptr, 0, slots, slots >= 0, rows2, rows2_ok, I, stride_out,
                     alpha, limit, False, 1, BLOCK_N)


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
    split, g_lo, g_hi = _k_split(K_GROUPS, SPLIT_K)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc = _gemv(acc, h_ptr, slots, row_ok, stride_h, blk_ptr + expert * N * K_WORDS,
                scl_ptr + expert * N * K_GROUPS, n, n_ok, g_lo, g_hi, K_WORDS, K_GROUPS,
                BLOCK_M, BLOCK_N, GROUPS)
    bias_ok = n < tl.where(split == 0, N, 0)  # only split 0 adds the bias
    down_epilogue(acc, bias_ptr, w_ptr, out_ptr, expert, slots, row_ok, slots * SPLIT_K + split, n,
                  bias_ok, N, stride_out, HAS_BIAS)
