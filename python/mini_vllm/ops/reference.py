"""PyTorch reference implementations of the GPT-OSS ops our CUDA kernels implement.

Why: they are what the runtime runs on CPU, and they are the oracle the kernels are checked against
(tests/ops, bench/device_check_kernels.py). Each follows transformers' GptOss code (the model we must
match) with one deliberate difference: math in fp32 and a single rounding to the input dtype, which is
what the kernels do; transformers' own bf16 path rounds intermediate products. The tests compare these
to transformers in fp32, where both agree exactly or to float rounding.
"""
from __future__ import annotations

import torch

E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """weight * x / sqrt(mean(x^2) + eps) over the last dim, fp32 math (transformers' GptOssRMSNorm)."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (weight.float() * y).to(x.dtype)


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """In place: residual <- x + residual (rounded to dtype); x <- rms_norm(residual). Returns (x, residual)."""
    residual.copy_((x.float() + residual.float()).to(residual.dtype))
    x.copy_(rms_norm(residual, weight, eps))
    return x, residual


def apply_rope(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
               cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q [T, Hq, D] and k [T, Hk, D] in place, NeoX halves; cos_sin_cache [max_pos, D] = [cos | sin]."""
    half = q.shape[-1] // 2
    cs = cos_sin_cache[positions.long()].float()
    cos, sin = cs[:, None, :half], cs[:, None, half:]
    for x in (q, k):
        x1, x2 = x[..., :half].float(), x[..., half:].float()
        rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        x.copy_(rotated.to(x.dtype))
    return q, k


def write_kv_cache(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   slot_mapping: torch.Tensor) -> None:
    """key/value [T, Hk, D] into caches [num_blocks, block_size, Hk, D] at flat slots; slot -1 is skipped."""
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    k_cache.view(-1, *k_cache.shape[2:])[slots] = key[keep]
    v_cache.view(-1, *v_cache.shape[2:])[slots] = value[keep]


def swiglu_clamped(gate_up: torch.Tensor, alpha: float = 1.702, limit: float = 7.0) -> torch.Tensor:
    """[..., 2I] interleaved (even = gate, odd = linear) -> [..., I] (transformers' GptOssExperts._apply_gate)."""
    g = gate_up[..., ::2].float().clamp(max=limit)
    lin = gate_up[..., 1::2].float().clamp(min=-limit, max=limit)
    return (g * torch.sigmoid(alpha * g) * (lin + 1)).to(gate_up.dtype)


def dequant_mxfp4(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """uint8 blocks [..., G, 16] + uint8 scales [..., G] -> [..., G*32] (no transpose, unlike transformers)."""
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != 16:
        raise ValueError(f"blocks {tuple(blocks.shape)} and scales {tuple(scales.shape)} do not match [..., G, 16]/[..., G]")
    work = torch.float64 if dtype == torch.float64 else torch.float32   # fp32 is exact: 2 significant bits
    lut = torch.tensor(E2M1_VALUES, dtype=work, device=blocks.device)
    b = blocks.to(torch.int64)
    vals = torch.stack((lut[b & 0xF], lut[b >> 4]), dim=-1).flatten(-2)        # [..., G, 32]
    vals = torch.ldexp(vals, scales.to(torch.int32)[..., None] - 127)
    return vals.flatten(-2).to(dtype)


def route_topk(logits: torch.Tensor, top_k: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits [T, E] -> (indices int32 [T, k], weights fp32 [T, k] = softmax over the k chosen)."""
    values, indices = torch.topk(logits.float(), top_k, dim=-1)
    return indices.to(torch.int32), torch.softmax(values, dim=-1)


# ---- paged attention -------------------------------------------------------------------------------------
# GPT-OSS attention (transformers' eager_attention_forward for GptOss), in the paged/varlen form the
# runtime and FA3 take: scores = q.k * scale; one learned sink logit per query head joins the softmax as
# an extra column (not scaled) and is dropped afterwards; query head h reads kv head h // (Hq / Hkv);
# `allowed` (causal, sliding window, context length) masks the rest. One implementation of that math
# (`attention`), two ways in: `paged_attention` (varlen, one sequence at a time: the oracle FA3 and the
# Triton kernel are checked against) and the CPU model's step (model/attention.py: sequences of equal
# query length batched, masks precomputed once per step).
_SCORE_ELEMS = 32 * 1024 * 1024      # bound on one attention score tensor (elements): long prefills are split


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
              sinks: torch.Tensor | None, scale: float, out: torch.Tensor,
              compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """q [B, Q, Hq, D], k/v [B, K, Hkv, D], allowed bool [B, Q, K] -> out [B, Q, Hq, D] (written, returned).

    Rows with no allowed key and no sink give 0 (not NaN)."""
    b, nq, hq, d = q.shape
    hkv = k.shape[2]
    g = hq // hkv
    kt = k.to(compute_dtype).permute(0, 2, 3, 1)                        # [B, Hkv, D, K]
    vg = v.to(compute_dtype).transpose(1, 2)                            # [B, Hkv, K, D]
    qg = q.view(b, nq, hkv, g, d).to(compute_dtype)
    sink = None if sinks is None else sinks.to(compute_dtype).view(1, hkv, g, 1, 1)
    step = max(1, _SCORE_ELEMS // max(1, b * hq * kt.shape[-1]))
    for q0 in range(0, nq, step):
        q1 = min(q0 + step, nq)
        n = q1 - q0
        qs = qg[:, q0:q1].permute(0, 2, 3, 1, 4).reshape(b, hkv, g * n, d)
        scores = torch.matmul(qs, kt).view(b, hkv, g, n, -1) * scale
        scores = scores.masked_fill(~allowed[:, None, None, q0:q1], float("-inf"))
        if sink is not None:
            scores = torch.cat([scores, sink.expand(b, hkv, g, n, 1)], dim=-1)
        probs = torch.softmax(scores, dim=-1)
        if sink is not None:
            probs = probs[..., :-1]                                    # the sink column is dropped
        else:
            probs = probs.nan_to_num(0.0)                              # nothing allowed, no sink -> 0
        og = torch.matmul(probs.reshape(b, hkv, g * n, -1), vg)        # [B, Hkv, G*n, D]
        out[:, q0:q1] = og.view(b, hkv, g, n, d).permute(0, 3, 1, 2, 4).reshape(b, n, hq, d).to(out.dtype)
    return out


def gather_kv(cache: torch.Tensor, page_table_row: torch.Tensor, num_keys: int) -> torch.Tensor:
    """[num_pages, page_size, Hkv, D] + the pages of one sequence -> its first num_keys keys [num_keys, Hkv, D]."""
    page_size = cache.shape[1]
    n_pages = (num_keys + page_size - 1) // page_size
    return cache[page_table_row[:n_pages].long()].reshape(-1, *cache.shape[2:])[:num_keys]


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, page_table: torch.Tensor,
                    cu_seqlens_q: torch.Tensor, seqused_k: torch.Tensor, *, causal: bool = True,
                    sliding_window: int | None = None, sinks: torch.Tensor | None = None,
                    softmax_scale: float | None = None, compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """q [total_q, Hq, D]; caches [num_pages, page_size, Hkv, D]; page_table int [B, max_pages];
    cu_seqlens_q int [B+1]; seqused_k int [B] -> out [total_q, Hq, D] in q's dtype.

    Sequence i has seqused_k[i] keys; its queries are the LAST (cu[i+1] - cu[i]) of them (bottom-right
    causal, as in FlashAttention). sliding_window W: a query at p sees keys p - W < k <= p (None/0: all)."""
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    out = torch.zeros(q.shape, dtype=q.dtype, device=q.device)
    cu, used = cu_seqlens_q.tolist(), seqused_k.tolist()
    for i in range(len(used)):
        s, e = cu[i], cu[i + 1]
        if e == s:
            continue
        nq, nk = e - s, used[i]
        if nk < nq:
            raise ValueError(f"sequence {i}: {nq} queries but only {nk} keys (queries are the last keys)")
        qpos = torch.arange(nk - nq, nk, device=q.device)[:, None]
        kpos = torch.arange(nk, device=q.device)[None, :]
        allowed = kpos <= qpos if causal else torch.ones(nq, nk, dtype=torch.bool, device=q.device)
        if sliding_window:
            allowed = allowed & (kpos > qpos - sliding_window)
        k, v = gather_kv(k_cache, page_table[i], nk), gather_kv(v_cache, page_table[i], nk)
        attention(q[None, s:e], k[None], v[None], allowed[None], sinks, scale, out[None, s:e], compute_dtype)
    return out
