"""Torch reference for GPT-OSS paged attention: varlen queries, block-paged KV, GQA, sinks, window.

Why: it is the CPU runtime's attention and the oracle FA3 (ops/attention_fa3.py) is checked against.
Semantics (transformers' eager_attention_forward for GptOss, in the paged/varlen form FA3 takes):
- sequence i has seqused_k[i] keys in the pages page_table[i, :]; its queries are the LAST
  (cu_seqlens_q[i+1] - cu_seqlens_q[i]) tokens, so query j sits at key position
  seqused_k[i] - n_q + j (bottom-right causal, as in FlashAttention);
- causal: keys at positions <= the query's; sliding_window W: keys with pos > qpos - W (W keys incl. self);
- scores = q.k * softmax_scale; one learned sink logit per head joins the softmax as an extra column
  (not scaled) and is dropped afterwards; query head h reads kv head h // (Hq / Hkv).
Math in fp32, output rounded to q's dtype.
"""
from __future__ import annotations

import torch


def gather_kv(cache: torch.Tensor, page_table_row: torch.Tensor, num_keys: int) -> torch.Tensor:
    """[num_pages, page_size, Hkv, D] + pages of one sequence -> its first num_keys keys [num_keys, Hkv, D]."""
    page_size = cache.shape[1]
    n_pages = (num_keys + page_size - 1) // page_size
    return cache[page_table_row[:n_pages].long()].reshape(-1, *cache.shape[2:])[:num_keys]


def attention_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, sliding_window: int | None,
                  sinks: torch.Tensor | None, softmax_scale: float) -> torch.Tensor:
    """One sequence: q [Nq, Hq, D] (the last Nq of Nk positions), k/v [Nk, Hkv, D] -> [Nq, Hq, D] fp32."""
    nq, hq, _ = q.shape
    nk, hkv, _ = k.shape
    group = hq // hkv
    kf = k.float().repeat_interleave(group, dim=1)       # [Nk, Hq, D]
    vf = v.float().repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), kf) * softmax_scale
    qpos = torch.arange(nk - nq, nk, device=q.device)[:, None]
    kpos = torch.arange(nk, device=q.device)[None, :]
    allowed = torch.ones(nq, nk, dtype=torch.bool, device=q.device)
    if causal:
        allowed &= kpos <= qpos
    if sliding_window is not None:
        allowed &= kpos > qpos - sliding_window
    scores = scores.masked_fill(~allowed, float("-inf"))
    if sinks is not None:
        sink_col = sinks.float().view(hq, 1, 1).expand(hq, nq, 1)
        scores = torch.cat((scores, sink_col), dim=-1)
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows with nothing allowed and no sink -> 0
    if sinks is not None:
        probs = probs[..., :-1]
    return torch.einsum("hqk,khd->qhd", probs, vf)


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, page_table: torch.Tensor,
                    cu_seqlens_q: torch.Tensor, seqused_k: torch.Tensor, *, causal: bool = True,
                    sliding_window: int | None = None, sinks: torch.Tensor | None = None,
                    softmax_scale: float | None = None) -> torch.Tensor:
    """q [total_q, Hq, D]; caches [num_pages, page_size, Hkv, D]; page_table int [B, max_pages];
    cu_seqlens_q int [B+1]; seqused_k int [B] -> out [total_q, Hq, D] in q's dtype."""
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    cu = cu_seqlens_q.tolist()
    used = seqused_k.tolist()
    for i in range(len(used)):
        s, e = cu[i], cu[i + 1]
        if e == s:
            continue
        if used[i] < e - s:
            raise ValueError(f"sequence {i}: {e - s} queries but only {used[i]} keys (queries are the last keys)")
        k = gather_kv(k_cache, page_table[i], used[i])
        v = gather_kv(v_cache, page_table[i], used[i])
        out[s:e] = attention_one(q[s:e], k, v, causal=causal, sliding_window=sliding_window, sinks=sinks,
                                 softmax_scale=scale)
    return out.to(q.dtype)
