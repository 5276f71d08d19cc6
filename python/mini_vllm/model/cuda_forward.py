"""GPT-OSS forward on the GPU: the same weights as `GptOssModel`, the fast kernels instead of plain torch.

Why a separate forward and not branches inside `GptOssModel.forward`: the CPU path is the readable
reference that tests compare with transformers; this one is written for an H100 and for CUDA-graph
capture - every shape is fixed by the number of tokens, attention metadata are device tensors (no
Python lists, no host sync), and each layer is a short chain of fused launches:

    qkv GEMM (cuBLAS) -> RoPE + paged KV write, one launch (ours)
    -> FlashAttention-3 with sinks / sliding window (ours around the FA3 fork) or Triton paged attention
    -> o_proj GEMM -> fused add+RMSNorm -> router GEMM + top-4 routing
    -> MXFP4 MoE, weights decoded in the kernel, SwiGLU fused: at 2..8 tokens our tensor-core GEMVs
       (gate_up, down: two launches), else Triton (GEMV at 1 token, grouped GEMM) -> fp32 rows per slot
    -> the per-token sum of those rows + residual add + the next layer's RMSNorm, one launch (ours)

`select_backends` decides once at start-up what can run (module built? kernel compiled for this GPU?
fused kernels agreeing with their unfused two-launch paths on this GPU - ops/selfcheck.py) and says so;
the engine prints the choice. `--no-fused-ops` (EngineArgs.fused_ops) keeps the unfused paths (A/B runs).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mini_vllm import ops
from mini_vllm.ops import gemv
from mini_vllm.model.gpt_oss import GptOssModel
from mini_vllm.model.layers import moe as moe_torch
from mini_vllm.ops.rope import YarnConfig, cos_sin_cache

log = logging.getLogger(__name__)


@dataclass
class CudaAttnInputs:
    """Varlen attention metadata as device tensors (the layout FA3's paged API takes)."""

    positions: torch.Tensor        # int64 [T]
    slot_mapping: torch.Tensor     # int64 [T]   (-1: do not write; padded graph rows)
    cu_seqlens_q: torch.Tensor     # int32 [B+1]
    seqused_k: torch.Tensor        # int32 [B]   keys per sequence, this step's included
    block_table: torch.Tensor      # int32 [B, max_blocks]
    max_seqlen_q: int
    max_seqlen_k: int


@dataclass
class Backends:
    attention: str                 # "fa3" | "triton"
    moe: str                       # "triton-mxfp4" | "torch"
    kernels: bool                  # our C-ABI kernels (norms, rope, kv write, routing)
    router: str = "unfused"        # "fused": router GEMM + top-k in one kernel; "unfused": GEMM, then top-k
    rope_kv: str = "unfused"       # "fused": RoPE + KV-cache write in one kernel; "unfused": two launches
    fa3_sched: str = "per-layer"   # FA3 scheduler metadata: "per-step" (shared by the layers) | "per-layer"
    moe_gemv: str = "off"          # "ours": MXFP4 GEMV kernels at 2..8 tokens | "off": the Triton MoE
    moe_sum_norm: str = "off"      # "fused": MoE sum + residual add + RMSNorm in one launch | "off"

    def describe(self) -> str:
        fa3 = f" (scheduler {self.fa3_sched})" if self.attention == "fa3" else ""
        return (f"attention={self.attention}{fa3}, moe={self.moe}, "
                f"fused ops={'ours (CUDA)' if self.kernels else 'torch'}, "
                f"router+top-k={self.router}, rope+kv-write={self.rope_kv}, MoE GEMV={self.moe_gemv}, "
                f"MoE sum+norm={self.moe_sum_norm}")


def check_fused(model: GptOssModel, enabled: bool = True, router_wanted: bool = False) -> tuple[str, str]:
    """(router, rope_kv) backends: "fused" where the fused kernel agrees with its unfused path here.

    A disagreement or an error is logged as a warning and that op stays unfused.
    """
    from mini_vllm.ops import selfcheck

    if not enabled:
        log.info("fused ops off (--no-fused-ops): fused router/rope kernels unused")
        return "unfused", "unfused"
    lw, cfg = model.layers[0], model.cfg
    problems = {
        "router": selfcheck.router_topk_problem(lw.router_w, lw.router_b, cfg.num_experts_per_tok),
        "rope_kv": selfcheck.rope_write_kv_problem(model.n_heads, model.n_kv, cfg.head_dim, model.dtype,
                                                   model.device),
    }
    for name, problem in problems.items():
        if problem:
            log.warning("fused %s kernel disagrees with its unfused path on this GPU (%s): using the unfused "
                        "path", name, problem)
    # The fused router is correct but measured slower than cuBLAS + our top-k on the H100 (call 10:
    # 10.9 vs 8.6 us at T=1, 21 vs 10 us at T=256), so it is opt-in (--fused-router) until it wins.
    return ("fused" if router_wanted and not problems["router"] else "unfused",
            "unfused" if problems["rope_kv"] else "fused")


def check_fa3_sched(model: GptOssModel, enabled: bool = True) -> str:
    """"per-step" if FA3 with scheduler metadata shared across layers matches FA3 per call here."""
    from mini_vllm.ops import selfcheck

    if not enabled:
        return "per-layer"
    problem = selfcheck.fa3_plan_problem(model.n_heads, model.n_kv, model.device)
    if problem:
        log.warning("FA3 with per-step scheduler metadata disagrees with per-call FA3 (%s): keeping FA3's "
                    "scheduler launch in every layer", problem)
    return "per-layer" if problem else "per-step"


def check_gemv(model: GptOssModel) -> tuple[str, str]:
    """(moe_gemv, moe_sum_norm): our MoE GEMVs / fused MoE sum + norm where they agree with torch here."""
    from mini_vllm.ops import selfcheck

    w = CudaForward._moe_weights(model.layers[0].experts)
    problem = "no packed MXFP4 experts" if w is None else selfcheck.moe_gemv_problem(w, model.cfg.num_experts_per_tok)
    if problem:
        log.warning("MoE GEMV / sum+norm kernels disagree with the reference on this GPU (%s): not used", problem)
    return ("off", "off") if problem else ("ours", "off" if model.tp_size > 1 else "fused")


def select_backends(model: GptOssModel, prefer: str = "auto", fused_ops: bool = True,
                    fused_router: bool = False, gemv_kernels: bool = True) -> Backends:
    """Pick the fastest backend available for this model on this GPU; `prefer` forces attention;
    `fused_ops`/`fused_router` are EngineArgs' switches for the fused kernels (see check_fused);
    `gemv_kernels` False keeps the Triton MoE and the unfused MoE sum (EngineArgs.gemv_kernels, A/B runs)."""
    from mini_vllm.ops import attention_fa3

    probe = torch.empty(1, model.n_heads, model.cfg.head_dim, dtype=model.dtype, device=model.device)
    sinks = torch.empty(model.n_heads, dtype=model.dtype, device=model.device)
    fa3_ok = prefer in ("auto", "fa3") and attention_fa3.fa3_supported(probe, sinks)
    if prefer == "fa3" and not fa3_ok:
        raise RuntimeError("attention backend fa3 requested but the FA3 module is not loadable here "
                           "(run `invoke kernels`; see mini_vllm.ops.ext.load_errors)")
    packed = all(lw.experts.packed is not None for lw in model.layers)
    kernels = ops.kernels_available()
    router, rope_kv = check_fused(model, fused_ops, fused_router) if kernels else ("unfused", "unfused")
    moe_gemv, moe_sum = check_gemv(model) if kernels and gemv_kernels and packed else ("off", "off")
    return Backends(attention="fa3" if fa3_ok else "triton", moe="triton-mxfp4" if packed else "torch",
                    kernels=kernels, router=router, rope_kv=rope_kv,
                    fa3_sched=check_fa3_sched(model, fused_ops) if fa3_ok else "per-layer", moe_gemv=moe_gemv,
                    moe_sum_norm=moe_sum)


class CudaForward:
    """Runs a CUDA-resident, bf16 `GptOssModel` with fused kernels; `forward` is graph-capturable."""

    def __init__(self, model: GptOssModel, backends: Backends):
        # Meant for CUDA + bf16; on a CPU (fp32) it still runs - ops fall back to torch and Triton
        # kernels run in the interpreter - which is how tests check this path against the reference.
        if backends.attention == "fa3" and (model.device.type != "cuda" or model.dtype != torch.bfloat16):
            raise ValueError("FA3 attention needs the model on a CUDA device in bfloat16")
        self.m, self.cfg, self.backends = model, model.cfg, backends
        cfg = model.cfg
        yarn = YarnConfig.from_hf({"head_dim": cfg.head_dim, "rope_theta": cfg.rope_theta,
                                   "rope_scaling": cfg.rope_scaling or {}})
        self.cos_sin = cos_sin_cache(cfg.max_position_embeddings, yarn, device=model.device)
        self.sinks = [lw.sinks.to(model.dtype).contiguous() for lw in model.layers]
        self.moe_weights = [self._moe_weights(lw.experts) for lw in model.layers]
        # norm weights in the model dtype (the CPU model keeps them fp32; our kernels take bf16);
        # ln1[L] is the final norm, so that each layer ends with one fused add+norm into the next
        cast = lambda t: t.to(model.dtype).contiguous()  # noqa: E731
        self.ln1 = [cast(lw.ln1) for lw in model.layers] + [cast(model.norm)]
        self.ln2 = [cast(lw.ln2) for lw in model.layers]

    @staticmethod
    def _moe_weights(experts):
        if experts.packed is None:
            return None
        from mini_vllm.ops.triton.mxfp4 import MoeWeights

        p = experts.packed
        return MoeWeights(p["gate_up_blocks"], p["gate_up_scales"], experts.gate_up_bias,
                          p["down_blocks"], p["down_scales"], experts.down_bias)

    # ---- pieces --------------------------------------------------------------------------------
    def _attention(self, i: int, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   a: CudaAttnInputs, plan=None) -> torch.Tensor:
        window = self.cfg.sliding_window if self.cfg.is_sliding(i) else None
        if self.backends.attention == "fa3":
            from mini_vllm.ops.attention_fa3 import fa3_attention

            return fa3_attention(q, k_cache, v_cache, a.block_table, a.cu_seqlens_q, a.seqused_k,
                                 a.max_seqlen_q, a.max_seqlen_k, causal=True, sliding_window=window,
                                 sinks=self.sinks[i], softmax_scale=self.m.scale, plan=plan, layer=i)
        from mini_vllm.ops.triton import paged_attention as triton_paged_attention

        return triton_paged_attention(q, k_cache, v_cache, a.cu_seqlens_q, a.seqused_k, a.block_table,
                                      max_seqlen_q=a.max_seqlen_q, max_seqlen_k=a.max_seqlen_k,
                                      scale=self.m.scale, sinks=self.sinks[i], window=window or 0)

    def _route(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, lw = self.m, self.m.layers[i]
        ids, weights = ops.router_topk(x, lw.router_w, lw.router_b, self.cfg.num_experts_per_tok,
                                       fused=self.backends.router == "fused")
        if m.tp_size > 1:      # this rank's experts only: others contribute 0 (weight 0 on a local expert)
            local = ids.long() - m.expert_offset
            mine = (local >= 0) & (local < m.n_experts)
            ids = torch.where(mine, local, 0).to(torch.int32)
            weights = torch.where(mine, weights, 0.0)
        return ids, weights

    def _moe(self, i: int, x: torch.Tensor) -> torch.Tensor:
        m, lw = self.m, self.m.layers[i]
        w = self.moe_weights[i]
        if w is None or self.backends.moe != "triton-mxfp4":
            return moe_torch(x, lw.router_w, lw.router_b, lw.experts, self.cfg.num_experts_per_tok,
                             self.cfg.swiglu_limit, self.cfg.swiglu_alpha, m.expert_offset)
        from mini_vllm.ops.triton import fused_moe_mxfp4

        ids, weights = self._route(i, x)
        return fused_moe_mxfp4(x, ids, weights, w)

    def _moe_rows(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The MoE before its per-token sum: fp32 rows [T * r, H] (our GEMVs at <= 8 tokens, else Triton)."""
        from mini_vllm.ops.triton.fused_moe import fused_moe_mxfp4_rows

        ids, weights = self._route(i, x)
        w = self.moe_weights[i]
        if self.backends.moe_gemv == "ours" and gemv.GEMV_MIN_TOKENS <= x.shape[0] <= gemv.GEMV_MAX_TOKENS:
            rows = gemv.moe_gemv_slots(x, ids, weights, w)
            if rows is not None:
                return rows, ids.shape[1]
        return fused_moe_mxfp4_rows(x, ids, weights, w)

    # ---- the forward ---------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, a: CudaAttnInputs,
                kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """input_ids [T] -> final-normed hidden [T, H]; writes this step's K/V into the caches."""
        m, cfg = self.m, self.cfg
        d, eps = cfg.head_dim, cfg.rms_norm_eps
        qd, kvd = m.n_heads * d, m.n_kv * d
        residual = F.embedding(input_ids, m.embed)
        x = ops.rms_norm(residual, self.ln1[0], eps)
        plan = None
        if self.backends.attention == "fa3" and self.backends.fa3_sched == "per-step":
            from mini_vllm.ops.attention_fa3 import StepPlan

            plan = StepPlan(len(m.layers), a.seqused_k.shape[0], residual.device)
        fused_sum = (self.backends.moe_sum_norm == "fused" and self.backends.moe == "triton-mxfp4"
                     and m.tp_size == 1)
        for i, lw in enumerate(m.layers):
            qkv = F.linear(x, lw.qkv_w, lw.qkv_b)
            q = qkv[:, :qd].view(-1, m.n_heads, d)
            k = qkv[:, qd:qd + kvd].view(-1, m.n_kv, d)
            v = qkv[:, qd + kvd:].view(-1, m.n_kv, d)
            k_cache, v_cache = kv_caches[i]
            # the rotated q lands in a contiguous buffer, as attention wants it (no separate copy)
            q = ops.rope_write_kv(q, k, v, k_cache, v_cache, a.positions, a.slot_mapping, self.cos_sin,
                                  fused=self.backends.rope_kv == "fused",
                                  q_out=torch.empty(q.shape, dtype=q.dtype, device=q.device))
            attn = self._attention(i, q, k_cache, v_cache, a, plan)
            o = m.all_reduce(F.linear(attn.view(-1, qd), lw.o_w, lw.o_b))
            x, residual = ops.fused_add_rms_norm(o, residual, self.ln2[i], eps)
            if fused_sum:
                rows, per_token = self._moe_rows(i, x)
                x, residual = gemv.moe_sum_add_rms_norm(rows, per_token, residual, self.ln1[i + 1], eps, out=x)
                continue
            y = m.all_reduce(self._moe(i, x))
            x, residual = ops.fused_add_rms_norm(y, residual, self.ln1[i + 1], eps)
        return x
