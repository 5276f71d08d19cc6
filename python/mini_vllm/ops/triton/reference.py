"""Plain-torch references for the Triton kernels: the same math, written the obvious way.

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


def paged_attention_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                              cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor,
                              block_tables: torch.Tensor, *, scale: float,
                              sinks: torch.Tensor | None = None, window: int = 0,
                              compute_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Gather each sequence's keys/values from the paged cache, then dense causal attention.

    The q tokens of sequence b are its last q_len positions (seq_lens[b] counts all keys).
    Sliding window w > 0: query at position p sees keys p-w < pos <= p. Sinks: one extra logit
    per q head in the softmax denominator, dropped from the output.
    """
    out = torch.empty_like(q)
    block_size, hkv = k_cache.shape[1], k_cache.shape[2]
    group = q.shape[1] // hkv
    for b in range(seq_lens.numel()):
        q0, q1 = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1])
        n_kv, n_q = int(seq_lens[b]), q1 - q0
        if n_q == 0:
            continue
        blocks = block_tables[b, : (n_kv + block_size - 1) // block_size].long()
        keys = k_cache[blocks].flatten(0, 1)[:n_kv].to(compute_dtype)  # [n_kv, Hkv, D]
        vals = v_cache[blocks].flatten(0, 1)[:n_kv].to(compute_dtype)
        keys = keys.repeat_interleave(group, dim=1)
        vals = vals.repeat_interleave(group, dim=1)
        qb = q[q0:q1].to(compute_dtype)
        logits = torch.einsum("qhd,khd->hqk", qb, keys) * scale
        qpos = torch.arange(n_kv - n_q, n_kv, device=q.device)[:, None]
        kpos = torch.arange(n_kv, device=q.device)[None, :]
        allowed = kpos <= qpos
        if window > 0:
            allowed &= kpos > qpos - window
        logits = logits.masked_fill(~allowed, float("-inf"))
        if sinks is not None:
            sink_col = sinks.to(compute_dtype)[:, None, None].expand(-1, n_q, 1)
            probs = torch.softmax(torch.cat([logits, sink_col], dim=-1), dim=-1)[..., :-1]
        else:
            probs = torch.softmax(logits, dim=-1)
        out[q0:q1] = torch.einsum("hqk,khd->qhd", probs, vals).to(q.dtype)
    return out
