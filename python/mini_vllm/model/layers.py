"""GPT-OSS building blocks in plain torch: RMSNorm, YaRN rotary embedding, the MoE block.

Each follows transformers' GptOss modules operation for operation (the reference the tests compare
against), but works on a flattened batch of tokens [T, hidden] as the paged engine feeds it, and the
MoE keeps MXFP4 experts packed (see mxfp4.py), expanding only the experts a step routes to.
"""
from __future__ import annotations

import threading
from typing import Callable

import torch
import torch.nn.functional as F

from mini_vllm.model import mxfp4
from mini_vllm.ops.reference import rms_norm  # noqa: F401 - the one RMSNorm (re-exported for the model)
from mini_vllm.ops.rope import YarnConfig, yarn_inv_freq
from mini_vllm.model.config import GptOssConfig

# Bound on the transient memory of one MoE chunk (dequantised experts + padded activations), in elements.
_MOE_CHUNK_ELEMS = 64 * 1024 * 1024

# Optional, bounded, process-wide budget for keeping dequantised copies of whole expert layers next to
# the packed weights (CPU only). Expanding MXFP4 costs more than the tiny model's whole matmul work, so a
# layer whose expansion fits the remaining budget is expanded once; larger models (gpt-oss-20b: ~3 GB a
# layer) stay on the transient per-step path. 0 disables it. Never used on CUDA. The engine sets it
# from EngineArgs.dequant_cache_mb (`--dequant-cache-mb`) before loading.
_DEFAULT_DEQUANT_CACHE_MB = 64


class _DequantBudget:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.used = 0
        self.limit = _DEFAULT_DEQUANT_CACHE_MB * 1024 * 1024

    def set_limit_mb(self, mb: int) -> None:
        self.limit = int(mb) * 1024 * 1024

    def take(self, nbytes: int) -> bool:
        limit = self.limit
        with self.lock:
            if self.used + nbytes > limit:
                return False
            self.used += nbytes
            return True


DEQUANT_BUDGET = _DequantBudget()


def rope_inv_freq(cfg: GptOssConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies and the cos/sin scale; YaRN through ops.rope (one implementation of it)."""
    rs = cfg.rope_scaling
    if not rs:
        return 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float) / cfg.head_dim)), 1.0
    kind = rs.get("rope_type", rs.get("type"))
    if kind != "yarn":
        raise ValueError(f"unsupported rope_scaling type {kind!r} (GPT-OSS uses yarn)")
    return yarn_inv_freq(YarnConfig.from_hf({"head_dim": cfg.head_dim, "rope_theta": cfg.rope_theta,
                                             "rope_scaling": rs}))


class Rotary:
    """NeoX-style rotary embedding (halves rotated) with a precomputed cos/sin table."""

    def __init__(self, cfg: GptOssConfig, max_positions: int, dtype: torch.dtype, device: torch.device):
        inv_freq, scale = rope_inv_freq(cfg)
        freqs = torch.arange(max_positions, dtype=torch.float32)[:, None] * inv_freq[None, :]
        self.cos = (freqs.cos() * scale).to(dtype=dtype, device=device)
        self.sin = (freqs.sin() * scale).to(dtype=dtype, device=device)

    def __call__(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [T, heads, D] rotated at positions [T]."""
        cos = self.cos[positions].unsqueeze(1)
        sin = self.sin[positions].unsqueeze(1)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Experts:
    """The experts a rank holds ([E_local, ...]), packed MXFP4 or dense, with their biases.

    `w_gate_up(idx)` -> [n, 2I, H] and `w_down(idx)` -> [n, H, I] give `F.linear`-shaped weights for
    the listed local experts only; for MXFP4 they are dequantised here and dropped after use.
    """

    def __init__(self, gate_up_bias: torch.Tensor, down_bias: torch.Tensor, dtype: torch.dtype,
                 packed: dict[str, torch.Tensor] | None = None, dense: dict[str, torch.Tensor] | None = None):
        self.gate_up_bias, self.down_bias, self.dtype = gate_up_bias, down_bias, dtype
        self.packed, self.dense = packed, dense
        self.expanded: dict[str, torch.Tensor] | None = None     # budgeted dequantised copy (CPU)
        if (packed is None) == (dense is None):
            raise ValueError("experts need exactly one of packed (MXFP4) or dense weights")
        if packed is not None and gate_up_bias.device.type == "cpu":
            two_i, h = gate_up_bias.shape[1], down_bias.shape[1]
            elem = torch.finfo(dtype).bits // 8
            if DEQUANT_BUDGET.take(self.num_experts * 3 * (two_i // 2) * h * elem):
                all_e = torch.arange(self.num_experts)
                self.expanded = {"gate_up": self._expand("gate_up", all_e), "down": self._expand("down", all_e)}

    def _expand(self, which: str, idx: torch.Tensor) -> torch.Tensor:
        return mxfp4.dequantize(self.packed[which + "_blocks"][idx], self.packed[which + "_scales"][idx], self.dtype)

    def _weights(self, which: str, idx: torch.Tensor) -> torch.Tensor:
        full = self.dense if self.dense is not None else self.expanded
        if full is None:
            return self._expand(which, idx)
        return full[which] if idx.numel() == self.num_experts else full[which][idx]

    @property
    def num_experts(self) -> int:
        return self.gate_up_bias.shape[0]

    def w_gate_up(self, idx: torch.Tensor) -> torch.Tensor:
        """idx: sorted local expert ids."""
        return self._weights("gate_up", idx)

    def w_down(self, idx: torch.Tensor) -> torch.Tensor:
        return self._weights("down", idx)

    def nbytes(self) -> int:
        tensors = list((self.packed or self.dense).values()) + [self.gate_up_bias, self.down_bias]
        return sum(t.numel() * t.element_size() for t in tensors)


def moe(
    x: torch.Tensor, router_w: torch.Tensor, router_b: torch.Tensor, experts: Experts, top_k: int,
    limit: float, alpha: float, expert_offset: int = 0,
) -> torch.Tensor:
    """Top-k routed experts for x [T, H]; only experts [expert_offset, +E_local) contribute on this rank."""
    t, hdim = x.shape
    logits = F.linear(x, router_w, router_b)
    top_v, top_i = torch.topk(logits, top_k, dim=-1)
    weights = torch.softmax(top_v, dim=1, dtype=top_v.dtype)
    e_local = experts.num_experts
    pair_e = top_i.reshape(-1) - expert_offset
    pair_tok = torch.arange(t, device=x.device).repeat_interleave(top_k)
    pair_w = weights.reshape(-1)
    if expert_offset or e_local != logits.shape[-1]:
        keep = (pair_e >= 0) & (pair_e < e_local)
        pair_e, pair_tok, pair_w = pair_e[keep], pair_tok[keep], pair_w[keep]
    out = torch.zeros_like(x)
    if pair_e.numel() == 0:
        return out
    order = torch.argsort(pair_e, stable=True)
    pair_e, pair_tok, pair_w = pair_e[order], pair_tok[order], pair_w[order]
    counts = torch.bincount(pair_e, minlength=e_local)
    hit = counts.nonzero().squeeze(1)
    counts_l = counts[hit].tolist()
    hit_l = hit.tolist()
    two_i = experts.gate_up_bias.shape[1]
    # experts per chunk so that dequantised weights + padded activations stay bounded
    per_expert = two_i * hdim + max(counts_l) * (two_i + hdim)
    chunk = max(1, _MOE_CHUNK_ELEMS // per_expert)
    starts = [0]
    for c in counts_l:
        starts.append(starts[-1] + c)
    for c0 in range(0, len(hit_l), chunk):
        c1 = min(c0 + chunk, len(hit_l))
        p0, p1 = starts[c0], starts[c1]
        idx = hit[c0:c1]
        n, maxc = c1 - c0, max(counts_l[c0:c1])
        e_rank = torch.repeat_interleave(torch.arange(n, device=x.device), counts[idx])
        pos = torch.arange(p1 - p0, device=x.device) - (torch.tensor(starts[c0:c1], device=x.device) - p0)[e_rank]
        tok = pair_tok[p0:p1]
        xp = x.new_zeros(n, maxc, hdim)
        xp[e_rank, pos] = x[tok]
        gu = torch.baddbmm(experts.gate_up_bias[idx].unsqueeze(1), xp, experts.w_gate_up(idx).transpose(1, 2))
        gate = gu[..., ::2].clamp(max=limit)
        up = gu[..., 1::2].clamp(min=-limit, max=limit)
        act = (up + 1) * (gate * torch.sigmoid(gate * alpha))
        y = torch.baddbmm(experts.down_bias[idx].unsqueeze(1), act, experts.w_down(idx).transpose(1, 2))
        out.index_add_(0, tok, y[e_rank, pos] * pair_w[p0:p1, None])
    return out


AllReduce = Callable[[torch.Tensor], torch.Tensor]
