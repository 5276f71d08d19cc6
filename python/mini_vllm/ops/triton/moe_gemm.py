"""Grouped MXFP4 GEMM kernels of the fused MoE: gate_up (+bias +clamped SwiGLU) and down (+bias
* routing weight), and the per-token sum over the k routed experts.

Why this shape: each program owns BLOCK_M routed rows of ONE expert (rows come from
`moe_align_block_size`) and BLOCK_N output features; it streams that expert's packed bytes once per
K-step and decodes them in registers, so weights cross HBM at 4.25 bits each and never exist dense.
The nibble pair of a byte is elements 2j and 2j+1 of the reduction dim; instead of interleaving them
back (a register shuffle), the activation tile is loaded as its even and odd columns and the product
is dot(x_even, W_lo) + dot(x_odd, W_hi). GPT-OSS interleaves gate/linear rows of gate_up (even =
gate, odd = linear), so the gate_up kernel keeps two accumulators (rows 2n and 2n+1) and the SwiGLU
epilogue is elementwise on them.

The dot runs in the activation dtype (bf16 on the H100; fp16/fp32 under TRITON_INTERPRET, where bf16
tl.dot is wrong) with an fp32 accumulator.
"""
from __future__ import annotations

import triton
import triton.language as tl



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
def _mxfp4_accumulate(acc, a_ptr, a_rows, row_ok, stride_a, blk_ptr, scl_ptr, n_idx, n_ok, K,
                      BLOCK_K: tl.constexpr):
    """acc[BM, BN] += A[a_rows, :K] @ W[n_idx, :K]^T with W packed MXFP4 rows (K/2 bytes, K/32 scales).

    blk_ptr/scl_ptr point at this expert's block bytes [N, K/2] and scales [N, K/32].
    """
    HALF: tl.constexpr = BLOCK_K // 2
    j = tl.arange(0, HALF)  # byte index within the K-tile: elements 2j, 2j+1
    a_base = a_ptr + a_rows[:, None] * stride_a
    w_base = blk_ptr + n_idx[None, :] * (K // 2)
    s_base = scl_ptr + n_idx[None, :] * (K // 32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + 2 * j
        k_ok = kk < K
        a_even = tl.load(a_base + kk[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        a_odd = tl.load(a_base + kk[None, :] + 1, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w_mask = k_ok[:, None] & n_ok[None, :]
        byte = tl.load(w_base + (k0 // 2 + j)[:, None], mask=w_mask, other=0).to(tl.int32)
        sc = tl.load(s_base + (kk // 32)[:, None], mask=w_mask, other=127).to(tl.int32)
        scale = (sc << 23).to(tl.float32, bitcast=True)  # 2^(s-127), exact for s in 1..254
        w_lo = (_e2m1_to_f32(byte & 15) * scale).to(a_even.dtype)
        w_hi = (_e2m1_to_f32(byte >> 4) * scale).to(a_even.dtype)
        acc += tl.dot(a_even, w_lo, out_dtype=tl.float32)
        acc += tl.dot(a_odd, w_hi, out_dtype=tl.float32)
    return acc


@triton.jit
def _tile(sorted_ids_ptr, expert_ids_ptr, num_slots, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's expert (-1: unused block), routed slots, and output columns (with masks)."""
    expert = tl.load(expert_ids_ptr + tl.program_id(0)).to(tl.int64)
    slots = tl.load(sorted_ids_ptr + tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M))
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    return expert, slots, slots < num_slots, n, n < N


@triton.jit
def moe_gate_up_kernel(x_ptr, blk_ptr, scl_ptr, bias_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr,
                       num_slots, K, I, stride_x, stride_out, alpha, limit,
                       TOP_K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[slot, n] = swiglu(x[slot // k] @ W_e[2n] + b, x @ W_e[2n+1] + b) for BLOCK_N columns of I."""
    expert, slots, row_ok, n, n_ok = _tile(sorted_ids_ptr, expert_ids_ptr, num_slots, I, BLOCK_M, BLOCK_N)
    if expert < 0:
        return
    eb = blk_ptr + expert * (2 * I) * (K // 2)
    es = scl_ptr + expert * (2 * I) * (K // 32)
    rows = slots // TOP_K
    gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    lin = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    gate = _mxfp4_accumulate(gate, x_ptr, rows, row_ok, stride_x, eb, es, 2 * n, n_ok, K, BLOCK_K)
    lin = _mxfp4_accumulate(lin, x_ptr, rows, row_ok, stride_x, eb, es, 2 * n + 1, n_ok, K, BLOCK_K)
    if HAS_BIAS:
        bb = bias_ptr + expert * (2 * I)
        gate += tl.load(bb + 2 * n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        lin += tl.load(bb + 2 * n + 1, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    gate = tl.minimum(gate, limit)
    lin = tl.minimum(tl.maximum(lin, -limit), limit)
    y = gate / (1.0 + tl.exp(-alpha * gate)) * (lin + 1.0)  # g * sigmoid(alpha g) * (l + 1)
    dst = out_ptr + slots.to(tl.int64)[:, None] * stride_out + n[None, :]
    tl.store(dst, y.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


@triton.jit
def moe_down_kernel(h_ptr, blk_ptr, scl_ptr, bias_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr,
                    num_slots, K, N, stride_h, stride_out,
                    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr):
    """out[slot, n] = topk_weight[slot] * (h[slot] @ W_e[n] + b[n]), fp32, one row per routed slot."""
    expert, slots, row_ok, n, n_ok = _tile(sorted_ids_ptr, expert_ids_ptr, num_slots, N, BLOCK_M, BLOCK_N)
    if expert < 0:
        return
    eb = blk_ptr + expert * N * (K // 2)
    es = scl_ptr + expert * N * (K // 32)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc = _mxfp4_accumulate(acc, h_ptr, slots, row_ok, stride_h, eb, es, n, n_ok, K, BLOCK_K)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + expert * N + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    rw = tl.load(w_ptr + slots, mask=row_ok, other=0.0).to(tl.float32)
    acc = acc * rw[:, None]
    dst = out_ptr + slots.to(tl.int64)[:, None] * stride_out + n[None, :]
    tl.store(dst, acc, mask=row_ok[:, None] & n_ok[None, :])


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
