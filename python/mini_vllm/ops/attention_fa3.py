"""GPT-OSS attention through our C-ABI FlashAttention-3 module (build/ext/mini_vllm_fa3.so).

Why a thin ctypes binding: flash_attn/fa3_capi.cu does what the fork's torch-bound mha_fwd does for the
GPT-OSS configuration, so no torch extension is built. This module validates tensors (the C side trusts
raw pointers), sizes and allocates the workspace the C side asks for (`mv_fa3_workspace_bytes`),
launches on torch's current stream (CUDA-graph capturable; pass `workspace` to reuse one buffer under a
graph), and turns error codes into exceptions with the C side's message. `paged_attention` picks FA3
when the module and the inputs allow it and falls back to the torch reference otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .ext import Module, try_load
from .reference import paged_attention as paged_attention_reference

MODULE = "mini_vllm_fa3"
HEURISTIC_SPLITS_CAP = 16  # workspace sized for this many splits when FA3's heuristic chooses (it may pick fewer)
NO_SPLIT_ROWS = 128 * 4 * 132  # query rows x heads = 4 waves of 128-row tiles on 132 SMs: FA3 never splits


def heuristic_splits_cap(total_q: int, num_heads_q: int) -> int:
    """Splits to size the workspace for when FA3's heuristic chooses. It splits the KV only when a step
    has too few tiles to fill the GPU; a step of many query rows never splits, so its workspace need not
    hold 16 splits' fp32 accumulators (at 8,192 tokens x 64 heads that was 2 GiB, which OOMed a server
    whose KV cache had taken the rest; the C side caps the splits to the workspace it is given)."""
    return 1 if total_q * num_heads_q >= NO_SPLIT_ROWS else HEURISTIC_SPLITS_CAP


@dataclass(frozen=True)
class Fa3Build:
    """What the loaded build supports: build_config.yaml `kernels.fa3.runtime`, via its manifest.json."""

    head_dim: int
    dtype: torch.dtype
    max_q_heads_with_sinks: int
    max_num_splits: int

    @classmethod
    def of(cls, mod: Module) -> "Fa3Build":
        rt = mod.runtime
        return cls(int(rt["head_dim"]), getattr(torch, str(rt["dtype"])), int(rt["max_q_heads_with_sinks"]),
                   int(rt["max_num_splits"]))


def build_limits(mod: Module | None = None) -> Fa3Build:
    """The limits of `mod` (default: the FA3 module this process loads); RuntimeError when there is none."""
    mod = mod or try_load(MODULE)
    if mod is None:
        from .ext import load_errors

        raise RuntimeError(f"fa3 module unavailable: {load_errors.get(MODULE, 'not loaded')}")
    return Fa3Build.of(mod)


def workspace_bytes(mod: Module, batch: int, total_q: int, num_heads_q: int, max_splits: int) -> int:
    return int(mod.lib.mv_fa3_workspace_bytes(batch, total_q, num_heads_q, Fa3Build.of(mod).head_dim, max_splits))


def _check(lim: Fa3Build, q, k_cache, v_cache, page_table, cu_seqlens_q, seqused_k, sinks) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ValueError(f"fa3: {msg}")

    d = lim.head_dim
    need(q.dim() == 3 and q.shape[-1] == d, f"q must be [total_q, Hq, {d}], got {tuple(q.shape)}")
    need(k_cache.dim() == 4 and k_cache.shape == v_cache.shape and k_cache.shape[-1] == d,
         f"k_cache/v_cache must both be [num_pages, page_size, Hkv, {d}]")
    need(q.dtype == k_cache.dtype == v_cache.dtype == lim.dtype, f"q, k_cache, v_cache must be {lim.dtype}")
    need(q.shape[1] % k_cache.shape[2] == 0, "Hq must be a multiple of Hkv")
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("page_table", page_table),
                    ("cu_seqlens_q", cu_seqlens_q), ("seqused_k", seqused_k)):
        need(t.is_cuda and t.device == q.device, f"{name} must be on {q.device}")
        need(t.is_contiguous(), f"{name} must be contiguous")
    for name, t in (("page_table", page_table), ("cu_seqlens_q", cu_seqlens_q), ("seqused_k", seqused_k)):
        need(t.dtype == torch.int32, f"{name} must be int32")
    need(page_table.dim() == 2 and page_table.shape[0] == seqused_k.shape[0] == cu_seqlens_q.shape[0] - 1,
         "page_table [B, max_pages], seqused_k [B], cu_seqlens_q [B+1] disagree on B")
    if sinks is not None:
        need(sinks.dtype == lim.dtype and sinks.shape == (q.shape[1],) and sinks.is_contiguous()
             and sinks.device == q.device, f"sinks must be {lim.dtype} [Hq] on q's device")
        need(q.shape[1] <= lim.max_q_heads_with_sinks, f"sinks need <= {lim.max_q_heads_with_sinks} query heads")


def fa3_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, page_table: torch.Tensor,
                  cu_seqlens_q: torch.Tensor, seqused_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, *,
                  causal: bool = True, sliding_window: int | None = None, sinks: torch.Tensor | None = None,
                  softmax_scale: float | None = None, num_splits: int = 0, out: torch.Tensor | None = None,
                  workspace: torch.Tensor | None = None, module: Module | None = None,
                  plan: "StepPlan | None" = None, layer: int = 0) -> torch.Tensor:
    """FA3 forward. Semantics identical to ops.reference.paged_attention (see there).

    sliding_window W: each query sees keys pos > qpos - W (GPT-OSS: 128 -> FA3 window_size_left 127).
    num_splits: 0 = FA3's heuristic, 1 = no split-KV, n = n splits (capped by the workspace and 256).
    workspace: uint8 CUDA tensor of >= workspace_bytes(...); allocated per call when omitted.
    plan, layer: share FA3's scheduler metadata across the layers of one step (see StepPlan).
    """
    mod = module or try_load(MODULE)
    lim = build_limits(mod)
    _check(lim, q, k_cache, v_cache, page_table, cu_seqlens_q, seqused_k, sinks)
    if sliding_window is not None and sliding_window < 1:
        raise ValueError("fa3: sliding_window must be >= 1 or None")
    total_q, hq, _ = q.shape
    batch = seqused_k.shape[0]
    out = torch.empty_like(q) if out is None else out
    if out.shape != q.shape or out.dtype != q.dtype or not out.is_contiguous():
        raise ValueError("fa3: out must be a contiguous tensor like q")
    if not 0 <= num_splits <= lim.max_num_splits:
        raise ValueError(f"fa3: num_splits must be in [0, {lim.max_num_splits}]")
    need = workspace_bytes(mod, batch, total_q, hq, num_splits or heuristic_splits_cap(total_q, hq))
    if workspace is None:
        workspace = torch.empty(need, dtype=torch.uint8, device=q.device)
    scale = softmax_scale if softmax_scale is not None else lim.head_dim ** -0.5
    window_left = -1 if sliding_window is None else sliding_window - 1
    sched, semaphore, sched_mode = plan.args(layer, window_left, num_splits, batch) if plan else (None, None, 0)
    mod.call("mv_fa3_fwd", out.data_ptr(), q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
             page_table.data_ptr(), page_table.shape[1], cu_seqlens_q.data_ptr(), seqused_k.data_ptr(),
             batch, total_q, max_seqlen_q, max_seqlen_k, hq, k_cache.shape[2], lim.head_dim,
             k_cache.shape[0], k_cache.shape[1], scale, int(causal), window_left,
             sinks.data_ptr() if sinks is not None else None, num_splits,
             workspace.data_ptr(), workspace.numel(), sched, semaphore, sched_mode,
             torch.cuda.current_stream(q.device).cuda_stream)
    return out


class StepPlan:
    """FA3 scheduler metadata computed once per attention kind per step, not once per layer.

    FA3 runs its varlen scheduler kernel (prepare_varlen_num_blocks, ~2.3 us on the H100) in every call,
    though its result depends only on the step's batch and the window. With a plan the first layer of
    each kind (window, num_splits) computes it into the plan (sched_mode 1), later layers reuse it
    (sched_mode 2, no launch); every layer has its own tile counter, all zeroed by one memset when the
    plan is made. Make one per forward (the batch must not change within it); graph-capturable.
    """

    def __init__(self, num_layers: int, batch: int, device: torch.device, max_kinds: int = 4):
        self.semaphores = torch.zeros(num_layers, dtype=torch.int32, device=device)
        self.sched = torch.empty(max_kinds, max(batch, 1), dtype=torch.int32, device=device)
        self.kinds: dict[tuple[int, int], int] = {}

    def args(self, layer: int, window_left: int, num_splits: int, batch: int) -> tuple[int, int, int]:
        """(sched pointer, semaphore pointer, sched_mode) for this layer's call."""
        if batch > self.sched.shape[1]:
            raise ValueError(f"fa3 plan made for batch {self.sched.shape[1]}, called with {batch}")
        key = (window_left, num_splits)
        mode = 2 if key in self.kinds else 1
        if mode == 1:
            if len(self.kinds) == self.sched.shape[0]:
                raise ValueError(f"fa3 plan holds {self.sched.shape[0]} attention kinds")
            self.kinds[key] = len(self.kinds)
        return self.sched[self.kinds[key]].data_ptr(), self.semaphores[layer].data_ptr(), mode


def fa3_supported(q: torch.Tensor, sinks: torch.Tensor | None) -> bool:
    """True when the FA3 module is loaded and the call is within what its build supports (its manifest's
    runtime limits: dtype, head_dim, query heads with sinks)."""
    mod = try_load(MODULE) if q.is_cuda else None
    if mod is None:
        return False
    lim = Fa3Build.of(mod)
    return (q.dtype == lim.dtype and q.shape[-1] == lim.head_dim
            and (sinks is None or q.shape[1] <= lim.max_q_heads_with_sinks))


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, page_table: torch.Tensor,
                    cu_seqlens_q: torch.Tensor, seqused_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, *,
                    causal: bool = True, sliding_window: int | None = None, sinks: torch.Tensor | None = None,
                    softmax_scale: float | None = None) -> torch.Tensor:
    """The runtime's attention: FA3 on an H100 with the module built, else the torch reference."""
    if fa3_supported(q, sinks):
        return fa3_attention(q, k_cache, v_cache, page_table, cu_seqlens_q, seqused_k, max_seqlen_q, max_seqlen_k,
                             causal=causal, sliding_window=sliding_window, sinks=sinks, softmax_scale=softmax_scale)
    return paged_attention_reference(q, k_cache, v_cache, page_table, cu_seqlens_q, seqused_k, causal=causal,
                                     sliding_window=sliding_window, sinks=sinks, softmax_scale=softmax_scale)
