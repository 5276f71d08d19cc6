"""Paged attention in Triton (varlen prefill and decode, GQA, sliding window, sinks): the FA3 fallback.

Why: FA3 with sinks needs the vllm-project fork and a long sm90a build; this kernel runs wherever
Triton does and is the peer FA3 is compared against. Design:
- One program = one KV head x a tile of BLOCK_T query tokens of one sequence; the GROUP query heads
  that share that KV head are packed into the M dimension (BLOCK_M = BLOCK_T * GROUP rows), so a
  decode step reads each KV block once for all its query heads.
- Keys/values are gathered position by position through the block table, so BLOCK_N is independent
  of the cache's block size.
- Online softmax in base 2. The sink is a logit column that is never stored: starting the running
  max at the sink and the running sum at 1 adds exp(sink - max) to the denominator for free.
- Split-K (flash-decoding): with few programs and long contexts, NUM_SPLITS programs share one tile's
  KV range, write unnormalised partials (acc, max, sum), and `_combine_kernel` merges them (and the sink).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
NUM_SMS_H100 = 132


@triton.jit
def _paged_attn_kernel(q_ptr, k_ptr, v_ptr, o_ptr, sinks_ptr, cu_q_ptr, seq_lens_ptr, bt_ptr,
                       part_o_ptr, part_ml_ptr,
                       sm_scale, window, num_tokens, num_q_heads, q_tiles,
                       stride_qt, stride_qh, stride_kb, stride_ks, stride_kh,
                       stride_vb, stride_vs, stride_vh, stride_ot, stride_oh, stride_bt,
                       GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, KV_BLOCK: tl.constexpr,
                       BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, HAS_SINKS: tl.constexpr,
                       NUM_SPLITS: tl.constexpr):
    BLOCK_M: tl.constexpr = BLOCK_T * GROUP
    seq = tl.program_id(0) // q_tiles
    t0 = (tl.program_id(0) % q_tiles) * BLOCK_T
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    q_start = tl.load(cu_q_ptr + seq)
    q_len = tl.load(cu_q_ptr + seq + 1) - q_start
    if t0 >= q_len:
        return
    kv_len = tl.load(seq_lens_ptr + seq)

    r = tl.arange(0, BLOCK_M)
    tok = t0 + r // GROUP
    head = kvh * GROUP + r % GROUP
    row_ok = tok < q_len
    qpos = kv_len - q_len + tok
    d = tl.arange(0, HEAD_DIM)
    q_rows = (q_start + tok).to(tl.int64)
    q = tl.load(q_ptr + q_rows[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :],
                mask=row_ok[:, None], other=0.0)

    # KV range of the whole tile, then this split's share of it (a multiple of BLOCK_N).
    hi = tl.minimum(kv_len, kv_len - q_len + t0 + BLOCK_T)
    lo = tl.where(window > 0, tl.maximum(kv_len - q_len + t0 - window + 1, 0), 0)
    chunk = tl.cdiv(tl.cdiv(hi - lo, NUM_SPLITS), BLOCK_N) * BLOCK_N
    s_lo = lo + split * chunk
    s_hi = tl.minimum(hi, s_lo + chunk)

    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    if HAS_SINKS and NUM_SPLITS == 1:
        m_i = tl.load(sinks_ptr + head).to(tl.float32) * LOG2E
        l_i += 1.0
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    qk_scale = sm_scale * LOG2E
    n = tl.arange(0, BLOCK_N)
    for start in range(s_lo, s_hi, BLOCK_N):
        pos = start + n
        pos_ok = pos < s_hi
        phys = tl.load(bt_ptr + seq.to(tl.int64) * stride_bt + pos // KV_BLOCK, mask=pos_ok,
                       other=0).to(tl.int64)
        slot = pos % KV_BLOCK
        k = tl.load(k_ptr + phys[:, None] * stride_kb + slot[:, None] * stride_ks
                    + kvh * stride_kh + d[None, :], mask=pos_ok[:, None], other=0.0)
        v = tl.load(v_ptr + phys[:, None] * stride_vb + slot[:, None] * stride_vs
                    + kvh * stride_vh + d[None, :], mask=pos_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), out_dtype=tl.float32) * qk_scale
        allowed = pos_ok[None, :] & (pos[None, :] <= qpos[:, None]) & row_ok[:, None]
        if window > 0:
            allowed = allowed & (pos[None, :] > qpos[:, None] - window)
        s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, out_dtype=tl.float32)
        m_i = m_new

    if NUM_SPLITS == 1:
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(o_ptr + q_rows[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None])
    else:
        # partials: o [S, T, Hq, D], (m, l) [S, T, Hq, 2]; m in base-2 units
        row = (split * num_tokens + q_start + tok).to(tl.int64) * num_q_heads + head
        tl.store(part_o_ptr + row[:, None] * HEAD_DIM + d[None, :], acc, mask=row_ok[:, None])
        tl.store(part_ml_ptr + row * 2, m_i, mask=row_ok)
        tl.store(part_ml_ptr + row * 2 + 1, l_i, mask=row_ok)


@triton.jit
def _combine_kernel(part_o_ptr, part_ml_ptr, sinks_ptr, o_ptr, num_tokens, num_q_heads,
                    stride_ot, stride_oh, HEAD_DIM: tl.constexpr, NUM_SPLITS: tl.constexpr,
                    SPLITS_P2: tl.constexpr, HAS_SINKS: tl.constexpr):
    """Merge the NUM_SPLITS partials of one (token, q head) and the sink into the output row."""
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    sp = tl.arange(0, SPLITS_P2)
    sp_ok = sp < NUM_SPLITS
    row = (sp * num_tokens + t) * num_q_heads + h
    m_s = tl.load(part_ml_ptr + row * 2, mask=sp_ok, other=-1.0e30)
    l_s = tl.load(part_ml_ptr + row * 2 + 1, mask=sp_ok, other=0.0)
    m = tl.max(m_s, axis=0)
    if HAS_SINKS:
        sink = tl.load(sinks_ptr + h).to(tl.float32) * LOG2E
        m = tl.maximum(m, sink)
    w = tl.exp2(m_s - m)
    denom = tl.sum(l_s * w, axis=0)
    if HAS_SINKS:
        denom += tl.exp2(sink - m)
    d = tl.arange(0, HEAD_DIM)
    acc = tl.load(part_o_ptr + row[:, None] * HEAD_DIM + d[None, :], mask=sp_ok[:, None], other=0.0)
    out = tl.sum(acc * w[:, None], axis=0) / tl.where(denom > 0, denom, 1.0)
    tl.store(o_ptr + t * stride_ot + h * stride_oh + d, out.to(o_ptr.dtype.element_ty))


def pick_num_splits(num_programs: int, max_seqlen_k: int | None, block_n: int) -> int:
    """Split the KV range only when the grid is too small to fill the SMs and contexts are long."""
    if max_seqlen_k is None or num_programs >= NUM_SMS_H100:
        return 1
    by_sms = triton.cdiv(2 * NUM_SMS_H100, num_programs)
    by_len = max_seqlen_k // (4 * block_n)
    return max(1, min(by_sms, by_len, 16))


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor, block_tables: torch.Tensor,
                    *, max_seqlen_q: int, max_seqlen_k: int | None = None, scale: float = 0.125,
                    sinks: torch.Tensor | None = None, window: int = 0,
                    num_splits: int | None = None, block_n: int = 32,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention of q [T, Hq, D] (sequences by cu_seqlens_q [B+1]) over the paged KV cache
    [num_blocks, block_size, Hkv, D]; seq_lens [B] counts each sequence's keys including its q tokens,
    block_tables [B, max_blocks] int32. Returns [T, Hq, D] in q.dtype.

    max_seqlen_q sizes the grid (a host int, as in FA3's varlen API); max_seqlen_k (host int) lets the
    split-K heuristic decide; num_splits forces it.
    """
    t, hq, dim = q.shape
    _, kv_block, hkv, dk = k_cache.shape
    if dk != dim or v_cache.shape != k_cache.shape:
        raise ValueError(f"cache shapes {tuple(k_cache.shape)}/{tuple(v_cache.shape)} do not fit q "
                         f"head_dim {dim}")
    if hq % hkv:
        raise ValueError(f"{hq} query heads are not a multiple of {hkv} KV heads")
    group = hq // hkv
    if group & (group - 1) or dim & (dim - 1):
        raise ValueError("query heads per KV head and head_dim must be powers of two")
    if q.stride(-1) != 1 or k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("q and the KV cache must be contiguous in head_dim")
    batch = seq_lens.numel()
    out = torch.empty_like(q) if out is None else out
    if t == 0 or batch == 0:
        return out
    block_t = max(1, 16 // group) if max_seqlen_q <= 16 // group else max(1, 64 // group)
    q_tiles = triton.cdiv(max_seqlen_q, block_t)
    splits = num_splits or pick_num_splits(batch * q_tiles * hkv, max_seqlen_k, block_n)
    if splits > 1:
        part_o = torch.empty((splits, t, hq, dim), dtype=torch.float32, device=q.device)
        part_ml = torch.empty((splits, t, hq, 2), dtype=torch.float32, device=q.device)
    else:
        part_o = part_ml = out  # unused
    sinks_arg = sinks if sinks is not None else q
    _paged_attn_kernel[(batch * q_tiles, hkv, splits)](
        q, k_cache, v_cache, out, sinks_arg, cu_seqlens_q, seq_lens, block_tables, part_o, part_ml,
        scale, window, t, hq, q_tiles, q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        out.stride(0), out.stride(1), block_tables.stride(0),
        GROUP=group, HEAD_DIM=dim, KV_BLOCK=kv_block, BLOCK_T=block_t, BLOCK_N=block_n,
        HAS_SINKS=sinks is not None, NUM_SPLITS=splits, num_warps=4, num_stages=2)
    if splits > 1:
        _combine_kernel[(t, hq)](part_o, part_ml, sinks_arg, out, t, hq, out.stride(0), out.stride(1),
                                 HEAD_DIM=dim, NUM_SPLITS=splits,
                                 SPLITS_P2=triton.next_power_of_2(splits),
                                 HAS_SINKS=sinks is not None)
    return out
