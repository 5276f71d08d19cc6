"""Grouped MXFP4 GEMM kernels of the fused MoE: gate_up (+bias +clamped SwiGLU) and down (+bias
* routing weight), and the per-token sum over the k routed experts.

Why this shape: each program owns BLOCK_M routed rows of ONE expert (rows come from
`moe_align_block_size`) and BLOCK_N output features; it streams that expert's packed bytes once per
K-step and decodes them on chip, so weights cross HBM at 4.25 bits each and never exist dense.
Memory access is what decides speed at decode sizes, so every load is a 2-D tile whose contiguous
dim is the checkpoint's contiguous dim (weight rows of K/2 bytes -> 16-byte vector loads; one scale
byte per 32 values, loaded as its own small [BLOCK_N, BLOCK_K/32] tile and broadcast, never gathered
per element). gate_up's gate/linear rows are interleaved (2n = gate, 2n+1 = linear), so one tile of
2*BLOCK_N consecutive rows feeds one dot and the accumulator is split in the epilogue.

Two decoders (constexpr DECODE, picked per config by the tuner):
  DECODE_DOT_SCALED: `tl.dot_scaled(x, None, bf16|fp16, W^T, scales, "e2m1")` - Triton's own fp4
      upcast (table-free bit tricks in its backend) feeding the MMA; needs bf16/fp16 activations.
  DECODE_BITS: e2m1 -> fp32 by exponent/mantissa construction, x 2^(s-127) built as exponent bits,
      interleave low/high nibbles with join+reshape, then `tl.dot` in the activation dtype (fp32
      activations use this; the interpreter tests cover both).
"""
from __future__ import annotations

import triton
import triton.language as tl

DECODE_BITS = 0
DECODE_DOT_SCALED = 1
DECODERS = {"bits": DECODE_BITS, "dot_scaled": DECODE_DOT_SCALED}


@triton.jit
def _e2m1_to_f32(nib):
    """Decode 4-bit e2m1 codes (int32 0..15) to fp32 exactly, without a lookup table."""
    mag = nib & 7
    exp = mag >> 1
    # normal codes (exp>0): 2^(exp-1) * (1 + m/2) -> fp32 exponent exp+126, top mantissa bit m.
    # code 1 (0.5) -> exponent 126, mantissa 0; code 0 -> 0.
    bits = tl.where(exp > 0, ((exp + 126) << 23) | ((mag & 1) << 22), tl.where(mag == 1, 126 << 23, 0))
    bits = bits | ((nib & 8) << 28)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _decode_tile(wb, ws, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Packed bytes [BN, BK/2] + scale bytes [BN, BK/32] -> fp32 weights [BN, BK] in K order."""
    b = wb.to(tl.int32)
    v = tl.join(_e2m1_to_f32(b & 15), _e2m1_to_f32(b >> 4))  # [BN, BK/2, 2]: elements 2j, 2j+1
    v = tl.reshape(v, (BLOCK_N, BLOCK_K // 32, 32))
    scale = (ws.to(tl.int32) << 23).to(tl.float32, bitcast=True)  # 2^(s-127), exact for s in 1..254
    return tl.reshape(v * scale[:, :, None], (BLOCK_N, BLOCK_K))


@triton.jit
def _mxfp4_gemm(acc, a_ptr, a_rows, row_ok, stride_a, w_ptr, s_ptr, n_rows, n_ok,
                K, K_HALF, K_GROUPS, stride_wn, stride_sn,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
                DECODE: tl.constexpr):
    """acc[BM, BN] += A[a_rows, :K] @ W[n_rows, :K]^T, W packed MXFP4 (rows of K/2 bytes, K/32 scales).

    w_ptr/s_ptr point at this expert's bytes [N, K/2] and scales [N, K/32]; strides are in elements
    and passed as arguments so Triton's divisibility specialisation can vectorise the loads.
    """
    HALF: tl.constexpr = BLOCK_K // 2
    GROUPS: tl.constexpr = BLOCK_K // 32
    ka = tl.arange(0, BLOCK_K)
    kb = tl.arange(0, HALF)
    ks = tl.arange(0, GROUPS)
    a_base = a_ptr + a_rows.to(tl.int64)[:, None] * stride_a + ka[None, :]
    w_base = w_ptr + n_rows.to(tl.int64)[:, None] * stride_wn + kb[None, :]
    s_base = s_ptr + n_rows.to(tl.int64)[:, None] * stride_sn + ks[None, :]
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_base + k0, mask=row_ok[:, None], other=0.0)
            wb = tl.load(w_base + k0 // 2, mask=n_ok[:, None], other=0)
            ws = tl.load(s_base + k0 // 32, mask=n_ok[:, None], other=127)
        else:
            a = tl.load(a_base + k0, mask=row_ok[:, None] & (k0 + ka < K)[None, :], other=0.0)
            wb = tl.load(w_base + k0 // 2, mask=n_ok[:, None] & (k0 // 2 + kb < K_HALF)[None, :],
                         other=0)
            ws = tl.load(s_base + k0 // 32, mask=n_ok[:, None] & (k0 // 32 + ks < K_GROUPS)[None, :],
                         other=127)
        if DECODE == 1:
            if a_ptr.dtype.element_ty == tl.bfloat16:
                acc = tl.dot_scaled(a, None, "bf16", tl.trans(wb), ws, "e2m1", acc=acc)
            else:
                acc = tl.dot_scaled(a, None, "fp16", tl.trans(wb), ws, "e2m1", acc=acc)
        else:
            w = _decode_tile(wb, ws, BLOCK_N, BLOCK_K).to(a.dtype)
            acc = tl.dot(a, tl.trans(w), acc=acc, out_dtype=tl.float32)
    return acc


@triton.jit
def _tile(sorted_ids_ptr, expert_ids_ptr, num_slots, BLOCK_M: tl.constexpr):
    """This program's expert (-1: unused block), its routed slots and their mask."""
    expert = tl.load(expert_ids_ptr + tl.program_id(0)).to(tl.int64)
    slots = tl.load(sorted_ids_ptr + tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M))
    return expert, slots, slots < num_slots


@triton.jit
def moe_gate_up_kernel(x_ptr, blk_ptr, scl_ptr, bias_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr,
                       num_slots, K, K_HALF, K_GROUPS, I, stride_x, stride_out, alpha, limit,
                       TOP_K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
                       DECODE: tl.constexpr):
    """out[slot, n] = swiglu(x[slot // k] @ W_e[2n] + b, x @ W_e[2n+1] + b) for BLOCK_N columns of I."""
    expert, slots, row_ok = _tile(sorted_ids_ptr, expert_ids_ptr, num_slots, BLOCK_M)
    if expert < 0:
        return
    rows2 = tl.program_id(1) * (2 * BLOCK_N) + tl.arange(0, 2 * BLOCK_N)  # gate/linear interleaved
    rows2_ok = rows2 < 2 * I
    eb = blk_ptr + expert * (2 * I) * K_HALF
    es = scl_ptr + expert * (2 * I) * K_GROUPS
    acc = tl.zeros((BLOCK_M, 2 * BLOCK_N), dtype=tl.float32)
    acc = _mxfp4_gemm(acc, x_ptr, slots // TOP_K, row_ok, stride_x, eb, es, rows2, rows2_ok,
                      K, K_HALF, K_GROUPS, K_HALF, K_GROUPS, 2 * BLOCK_N, BLOCK_K, EVEN_K, DECODE)
    gate_up_epilogue(acc, bias_ptr, out_ptr, expert, slots, row_ok, rows2, rows2_ok, I, stride_out,
                     alpha, limit, HAS_BIAS, BLOCK_M, BLOCK_N)


@triton.jit
def gate_up_epilogue(acc, bias_ptr, out_ptr, expert, slots, row_ok, rows2, rows2_ok, I, stride_out,
                     alpha, limit, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr):
    """acc [BM, 2BN] (gate/linear interleaved) + bias -> clamped SwiGLU -> out[slot, n] (shared by
    the grouped GEMM and the GEMV)."""
    if HAS_BIAS:
        acc += tl.load(bias_ptr + expert * (2 * I) + rows2, mask=rows2_ok, other=0.0).to(tl.float32)[None, :]
    gate, lin = tl.split(tl.reshape(acc, (BLOCK_M, BLOCK_N, 2)))
    gate = tl.minimum(gate, limit)
    lin = tl.minimum(tl.maximum(lin, -limit), limit)
    y = gate / (1.0 + tl.exp(-alpha * gate)) * (lin + 1.0)  # g * sigmoid(alpha g) * (l + 1)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    dst = out_ptr + slots.to(tl.int64)[:, None] * stride_out + n[None, :]
    tl.store(dst, y.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & (n < I)[None, :])


@triton.jit
def moe_down_kernel(h_ptr, blk_ptr, scl_ptr, bias_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr,
                    num_slots, K, K_HALF, K_GROUPS, N, stride_h, stride_out,
                    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr, DECODE: tl.constexpr):
    """out[slot, n] = topk_weight[slot] * (h[slot] @ W_e[n] + b[n]), fp32, one row per routed slot."""
    expert, slots, row_ok = _tile(sorted_ids_ptr, expert_ids_ptr, num_slots, BLOCK_M)
    if expert < 0:
        return
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    eb = blk_ptr + expert * N * K_HALF
    es = scl_ptr + expert * N * K_GROUPS
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc = _mxfp4_gemm(acc, h_ptr, slots, row_ok, stride_h, eb, es, n, n_ok,
                      K, K_HALF, K_GROUPS, K_HALF, K_GROUPS, BLOCK_N, BLOCK_K, EVEN_K, DECODE)
    down_epilogue(acc, bias_ptr, w_ptr, out_ptr, expert, slots, row_ok, slots, n, n_ok, N, stride_out,
                  HAS_BIAS)


@triton.jit
def down_epilogue(acc, bias_ptr, w_ptr, out_ptr, expert, slots, row_ok, out_rows, n, n_ok, N,
                  stride_out, HAS_BIAS: tl.constexpr):
    """out[out_rows, n] = topk_weight[slot] * (acc + bias[n]), fp32; the bias is loaded where `n_ok`
    (a K-split passes n_ok & (split == 0) so only one split adds it); the store masks n < N."""
    if HAS_BIAS:
        acc += tl.load(bias_ptr + expert * N + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    rw = tl.load(w_ptr + slots, mask=row_ok, other=0.0).to(tl.float32)
    acc = acc * rw[:, None]
    dst = out_ptr + out_rows.to(tl.int64)[:, None] * stride_out + n[None, :]
    tl.store(dst, acc, mask=row_ok[:, None] & (n < N)[None, :])


@triton.jit
def moe_sum_kernel(src_ptr, out_ptr, N, TOP_K: tl.constexpr, BLOCK_N: tl.constexpr):
    """out[t, :] = sum_j src[t*k + j, :] (fp32 sum, stored in out's dtype): deterministic, no atomics."""
    t = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = n < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for j in range(TOP_K):
        acc += tl.load(src_ptr + (t * TOP_K + j) * N + n, mask=ok, other=0.0)
    tl.store(out_ptr + t * N + n, acc.to(out_ptr.dtype.element_ty), mask=ok)
