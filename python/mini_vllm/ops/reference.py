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
