"""GPT-OSS ops for the runtime: one function per op, CUDA kernel when possible, torch otherwise.

Why one dispatching layer: the model code calls `rms_norm(x, w)` and neither knows nor cares whether
the tensor is on an H100 with build/ext/mini_vllm_kernels.so loaded (-> our C-ABI kernel, launched on
torch's current stream, so CUDA-graph capture works) or on a CPU in CI (-> ops.reference). Inputs the
kernels do not take (other dtypes, misaligned or non-contiguous rows) go to the reference, correctly.
Signatures and semantics are documented in docs/kernels.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import reference
from .ext import try_load
from .rope import YarnConfig, cos_sin_cache

__all__ = ["rms_norm", "fused_add_rms_norm", "apply_rope", "write_kv_cache", "rope_write_kv", "swiglu_clamped",
           "dequant_mxfp4", "route_topk", "router_topk", "cos_sin_cache", "YarnConfig", "kernels_available"]

_MODULE = "mini_vllm_kernels"
# Above this many tokens the fused router re-reads its weights too often (once per 8 tokens, from L2):
# cuBLAS + route_topk is used instead (prefill). Decode batches are far below it.
ROUTER_FUSED_MAX_TOKENS = 1024


def _kernels(*tensors: torch.Tensor):
    """The loaded kernels module if every tensor is a CUDA tensor, else None."""
    if not all(t.is_cuda for t in tensors):
        return None
    return try_load(_MODULE)


def kernels_available() -> bool:
    return torch.cuda.is_available() and try_load(_MODULE) is not None


def _bf16_rows(*tensors: torch.Tensor) -> bool:
    return all(t.dtype == torch.bfloat16 and t.is_contiguous() and t.data_ptr() % 16 == 0 for t in tensors)


def _into(out: torch.Tensor | None, result: torch.Tensor) -> torch.Tensor:
    return result if out is None else out.copy_(result)


def _stream() -> int:
    return torch.cuda.current_stream().cuda_stream


def _int64(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.int64 and t.is_contiguous() else t.long().contiguous()


def _rope_ok(q: torch.Tensor, k: torch.Tensor, cos_sin: torch.Tensor) -> bool:
    """q/k bf16 [T, H, D] with contiguous heads and 8-byte token strides; cos_sin fp32 contiguous."""
    return (q.dtype == k.dtype == torch.bfloat16 and cos_sin.dtype == torch.float32 and cos_sin.is_contiguous()
            and q.stride(-1) == k.stride(-1) == 1 and q.stride(-2) == k.stride(-2) == q.shape[-1]
            and q.stride(0) % 4 == 0 and k.stride(0) % 4 == 0 and q.shape[-1] % 8 == 0
            and q.data_ptr() % 8 == 0 and k.data_ptr() % 8 == 0)


def _kv_ok(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> bool:
    """key/value bf16 rows of 16-byte vectors at 16-byte token strides; caches bf16, contiguous, aligned."""
    return (_bf16_rows(k_cache, v_cache) and key.dtype == value.dtype == torch.bfloat16
            and key[0:1].is_contiguous() and value[0:1].is_contiguous() and key.stride(0) % 8 == 0
            and value.stride(0) % 8 == 0 and (key.shape[1] * key.shape[2]) % 8 == 0
            and key.data_ptr() % 16 == 0 and value.data_ptr() % 16 == 0)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5, out: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm over the last dim of x [..., H] with weight [H]; returns out (new unless given; may be x)."""
    mod = _kernels(x, weight)
    if mod is None or not _bf16_rows(x, weight) or x.shape[-1] % 8 or (out is not None and not _bf16_rows(out)):
        return _into(out, reference.rms_norm(x, weight, eps))
    out = torch.empty_like(x) if out is None else out
    mod.call("mv_rms_norm", out.data_ptr(), x.data_ptr(), weight.data_ptr(), x.numel() // x.shape[-1], x.shape[-1],
             eps, _stream())
    return out


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """In place: residual <- x + residual; x <- rms_norm(residual, weight). Returns (x, residual)."""
    mod = _kernels(x, residual, weight)
    if mod is None or not _bf16_rows(x, residual, weight) or x.shape[-1] % 8:
        return reference.fused_add_rms_norm(x, residual, weight, eps)
    mod.call("mv_fused_add_rms_norm", x.data_ptr(), residual.data_ptr(), weight.data_ptr(), x.numel() // x.shape[-1],
             x.shape[-1], eps, _stream())
    return x, residual


def apply_rope(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
               cos_sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """In place NeoX/YaRN RoPE on q [T, Hq, D] and k [T, Hk, D] (heads contiguous; token stride free).

    positions: int [T]; cos_sin: fp32 [max_pos, D] from `cos_sin_cache`.
    """
    mod = _kernels(q, k, positions, cos_sin)
    if mod is None or not _rope_ok(q, k, cos_sin):
        return reference.apply_rope(q, k, positions, cos_sin)
    mod.call("mv_rope_neox", q.data_ptr(), k.data_ptr(), _int64(positions).data_ptr(), cos_sin.data_ptr(), q.shape[0], q.shape[1],
             k.shape[1], q.shape[2], q.stride(0), k.stride(0), _stream())
    return q, k


def write_kv_cache(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   slot_mapping: torch.Tensor) -> None:
    """key/value [T, Hk, D] -> k_cache/v_cache [num_blocks, block_size, Hk, D] at slot_mapping (-1 = skip)."""
    mod = _kernels(key, value, k_cache, v_cache, slot_mapping)
    if mod is None or not _kv_ok(key, value, k_cache, v_cache):
        reference.write_kv_cache(key, value, k_cache, v_cache, slot_mapping)
        return
    mod.call("mv_write_kv_cache", key.data_ptr(), value.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
             _int64(slot_mapping).data_ptr(), key.shape[0], key.shape[1], key.shape[2], key.stride(0),
             value.stride(0), _stream())


def rope_write_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  positions: torch.Tensor, slot_mapping: torch.Tensor, cos_sin: torch.Tensor,
                  fused: bool = True, q_out: torch.Tensor | None = None) -> torch.Tensor:
    """`apply_rope(q, k, positions, cos_sin)` then `write_kv_cache(k, v, k_cache, v_cache, slot_mapping)`.

    Returns the rotated q: q itself (rotated in place) or, when given, q_out (same shape; q is then left
    as it was) - e.g. a contiguous buffer for attention when q is a strided view of the qkv output.
    One launch (mv_rope_write_kv) when `fused` and the inputs suit the kernel; else the ops above.
    """
    out = q if q_out is None else q_out
    mod = _kernels(q, k, v, k_cache, v_cache, positions, slot_mapping, cos_sin, out) if fused else None
    if mod is None or not rope_write_kv_fused_ok(q, k, v, k_cache, v_cache, cos_sin, out):
        if q_out is not None:
            q_out.copy_(q)
        apply_rope(out, k, positions, cos_sin)
        write_kv_cache(k, v, k_cache, v_cache, slot_mapping)
        return out
    mod.call("mv_rope_write_kv", q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), k_cache.data_ptr(),
             v_cache.data_ptr(), _int64(positions).data_ptr(), _int64(slot_mapping).data_ptr(), cos_sin.data_ptr(),
             q.shape[0], q.shape[1], k.shape[1], q.shape[2], q.stride(0), k.stride(0), v.stride(0), out.stride(0),
             _stream())
    return out


def swiglu_clamped(gate_up: torch.Tensor, alpha: float = 1.702, limit: float = 7.0,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """[..., 2I] interleaved gate/linear -> [..., I]: min(g,limit)*sigmoid(alpha*g)*(clamp(l,+-limit)+1)."""
    mod = _kernels(gate_up)
    inter = gate_up.shape[-1] // 2
    if mod is None or not _bf16_rows(gate_up) or inter % 4 or (out is not None and not _bf16_rows(out)):
        return _into(out, reference.swiglu_clamped(gate_up, alpha, limit))
    if out is None:
        out = torch.empty(*gate_up.shape[:-1], inter, dtype=gate_up.dtype, device=gate_up.device)
    mod.call("mv_swiglu_clamped", out.data_ptr(), gate_up.data_ptr(), gate_up.numel() // gate_up.shape[-1], inter,
             alpha, limit, _stream())
    return out


def dequant_mxfp4(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 blocks [..., G, 16] + uint8 scales [..., G] -> [..., G*32] in dtype (bf16 on the kernel path)."""
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != 16:
        return reference.dequant_mxfp4(blocks, scales, dtype)  # raises the shape error
    mod = _kernels(blocks, scales)
    ok = (mod is not None and dtype == torch.bfloat16 and blocks.dtype == scales.dtype == torch.uint8
          and blocks.is_contiguous() and scales.is_contiguous() and blocks.data_ptr() % 16 == 0
          and (out is None or _bf16_rows(out)))
    if not ok:
        return _into(out, reference.dequant_mxfp4(blocks, scales, dtype))
    if out is None:
        out = torch.empty(*scales.shape[:-1], scales.shape[-1] * 32, dtype=dtype, device=blocks.device)
    mod.call("mv_dequant_mxfp4", out.data_ptr(), blocks.data_ptr(), scales.data_ptr(), scales.numel(), _stream())
    return out


def route_topk(logits: torch.Tensor, top_k: int = 4,
               out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits [T, E] -> (expert indices int32 [T, k], fp32 softmax weights over the k chosen)."""
    mod = _kernels(logits)
    if mod is None or logits.dtype != torch.bfloat16 or not logits.is_contiguous() or logits.shape[-1] > 256 or top_k > 8:
        idx, w = reference.route_topk(logits, top_k)
        return (out[0].copy_(idx), out[1].copy_(w)) if out is not None else (idx, w)
    idx, w = _topk_out(logits.shape[0], top_k, logits.device, out)
    mod.call("mv_route_topk", logits.data_ptr(), idx.data_ptr(), w.data_ptr(), logits.shape[0], logits.shape[1], top_k,
             _stream())
    return idx, w


def _topk_out(t: int, top_k: int, device: torch.device,
              out: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
    idx, w = out if out is not None else (torch.empty(t, top_k, dtype=torch.int32, device=device),
                                          torch.empty(t, top_k, dtype=torch.float32, device=device))
    if idx.dtype != torch.int32 or w.dtype != torch.float32 or not (idx.is_contiguous() and w.is_contiguous()):
        raise ValueError("route_topk: out must be contiguous (int32 [T, k], float32 [T, k])")
    return idx, w


def router_fused_ok(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, top_k: int) -> bool:
    """Whether mv_router_topk takes these inputs (device aside): see `router_topk`."""
    return (x.dim() == 2 and x.dtype == weight.dtype == torch.bfloat16 and x.stride(1) == 1
            and x.stride(0) % 8 == 0 and x.data_ptr() % 16 == 0 and _bf16_rows(weight) and x.shape[1] % 8 == 0
            and weight.shape[1] == x.shape[1] and weight.shape[0] <= 256 and top_k <= min(8, weight.shape[0])
            and x.shape[0] <= ROUTER_FUSED_MAX_TOKENS
            and (bias is None or (bias.dtype == torch.bfloat16 and bias.is_contiguous()
                                  and tuple(bias.shape) == (weight.shape[0],))))


def rope_write_kv_fused_ok(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                           v_cache: torch.Tensor, cos_sin: torch.Tensor, q_out: torch.Tensor | None = None) -> bool:
    """Whether mv_rope_write_kv takes these inputs (device aside): see `rope_write_kv`."""
    out = q if q_out is None else q_out
    return (_rope_ok(q, k, cos_sin) and _rope_ok(out, k, cos_sin) and out.shape == q.shape
            and _kv_ok(k, v, k_cache, v_cache) and k.shape == v.shape)


def router_topk(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, top_k: int = 4,
                out: tuple[torch.Tensor, torch.Tensor] | None = None,
                fused: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """`route_topk(F.linear(x, weight, bias), top_k)`: x [T, H], weight [E, H], bias [E] -> (ids, weights).

    One launch (mv_router_topk: GEMM with fp32 accumulation, logits rounded to x's dtype, top-k, softmax)
    when `fused` and the inputs suit it (bf16, 16-byte aligned rows, E <= 256, k <= 8, T <=
    ROUTER_FUSED_MAX_TOKENS); else the GEMM and route_topk as two ops.
    """
    mod = _kernels(x, weight) if fused else None
    if mod is None or not router_fused_ok(x, weight, bias, top_k):
        return route_topk(F.linear(x, weight, bias), top_k, out)
    idx, w = _topk_out(x.shape[0], top_k, x.device, out)
    mod.call("mv_router_topk", x.data_ptr(), weight.data_ptr(), None if bias is None else bias.data_ptr(),
             idx.data_ptr(), w.data_ptr(), x.shape[0], x.stride(0), x.shape[1], weight.shape[0], top_k, _stream())
    return idx, w
