"""`fused_moe_mxfp4`: the GPT-OSS expert MLP for routed tokens in four launches, weights kept packed.

Why: a Python loop over experts costs one dense dequantise + two matmuls per expert hit (hundreds of
launches and a bf16 copy of every weight); here it is align -> gate_up(+SwiGLU) -> down(*weight) -> sum,
with the grid fixed by the shapes so the whole thing is CUDA-graph capturable (no host sync).
Small T (decode) can take the GEMV kernels instead (moe_gemv.py; bucket field "kernel": "gemv",
whose block_m is slots per program, 1 = no align launch). Tile sizes follow the token count and are DATA: `moe_configs.json` (next to this file, or the file
named by `--moe-configs`, EngineArgs.moe_configs) maps T buckets to tiles, so tuned winners from
bench/device_tune_moe.py drop in without code changes. The stages are exposed one by one
(`moe_gate_up`, `moe_down`, `moe_sum`) so the tuner can time each with its own candidates.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
import triton

from .moe_align import moe_align_block_size
from .moe_gemm import DECODERS, moe_down_kernel, moe_gate_up_kernel, moe_sum_kernel
from .moe_gemv import moe_down_gemv_kernel, moe_gate_up_gemv_kernel
from .mxfp4 import SWIGLU_ALPHA, SWIGLU_LIMIT, MoeWeights

CONFIG_TABLE = Path(__file__).with_name("moe_configs.json")
_TABLE_IN_USE: str | None = None     # set by use_config_table (the engine, from --moe-configs)
KERNELS = ("grouped", "gemv")


@dataclass(frozen=True)
class GemmTiles:
    """Tiles and launch knobs of one grouped GEMM (gate_up or down)."""

    block_n: int = 64
    block_k: int = 128
    num_warps: int = 4
    num_stages: int = 3
    decode: str = "dot_scaled"  # or "bits"; fp32 activations always use "bits" (grouped GEMM only)
    split_k: int = 1  # GEMV down only: K-splits per output tile, summed with the k routed slots


@dataclass(frozen=True)
class MoeConfig(GemmTiles):
    """block_m (shared: it sizes the align step) + gate_up tiles (the GemmTiles fields, inherited);
    `down` overrides them for down.

    kernel: "grouped" (tensor-core grouped GEMM, moe_gemm.py) or "gemv" (moe_gemv.py, decode sizes;
    block_m = routed slots per program, 1 = one slot per program and no align launch).
    """

    block_m: int = 16
    down: GemmTiles | None = field(default=None)
    kernel: str = "grouped"

    def gate_up_tiles(self) -> GemmTiles:
        return GemmTiles(self.block_n, self.block_k, self.num_warps, self.num_stages, self.decode,
                         self.split_k)

    def down_tiles(self) -> GemmTiles:
        return self.down or self.gate_up_tiles()

    @classmethod
    def from_dict(cls, d: dict) -> MoeConfig:
        """{"block_m", "kernel"?, "gate_up": {GemmTiles}, "down": {GemmTiles}} (a moe_configs.json
        bucket; "kernel" defaults to "grouped")."""
        gu = GemmTiles(**d.get("gate_up", {}))
        cfg = cls(block_m=int(d["block_m"]), **asdict(gu), kernel=str(d.get("kernel", "grouped")),
                  down=GemmTiles(**d["down"]) if "down" in d else None)
        if cfg.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {cfg.kernel!r}")
        return cfg

    def to_dict(self) -> dict:
        return {"block_m": self.block_m, "kernel": self.kernel, "gate_up": asdict(self.gate_up_tiles()),
                "down": asdict(self.down_tiles())}


@lru_cache(maxsize=4)
def load_config_table(path: str) -> tuple[tuple[int, MoeConfig], ...]:
    """(max_tokens, config) pairs in file order; a clear error names a malformed file."""
    try:
        buckets = json.loads(Path(path).read_text())["buckets"]
        table = tuple((int(b["max_tokens"]), MoeConfig.from_dict(b)) for b in buckets)
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"bad MoE config table {path}: {exc}") from exc
    if not table:
        raise ValueError(f"MoE config table {path} has no buckets")
    return table


def use_config_table(path: str | None) -> None:
    """Make `path` the table pick_config reads (None: the shipped moe_configs.json)."""
    global _TABLE_IN_USE
    _TABLE_IN_USE = path


def pick_config(num_tokens: int, top_k: int, num_experts: int, table: str | None = None) -> MoeConfig:
    """The first bucket with num_tokens <= max_tokens (the last bucket catches larger T).

    top_k/num_experts are accepted for callers that key on rows per expert; the table is tuned for
    gpt-oss (k=4, E=32/128), where T alone decides.
    """
    del top_k, num_experts
    rows = load_config_table(table or _TABLE_IN_USE or str(CONFIG_TABLE))
    for max_tokens, cfg in rows:
        if num_tokens <= max_tokens:
            return cfg
    return rows[-1][1]


def _check_inputs(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                  w: MoeWeights) -> None:
    w.validate()
    if x.dim() != 2 or x.shape[1] != w.hidden_size:
        raise ValueError(f"x must be [T, {w.hidden_size}], got {tuple(x.shape)}")
    if topk_ids.dim() != 2 or topk_ids.shape[0] != x.shape[0]:
        raise ValueError(f"topk_ids must be [T={x.shape[0]}, k], got {tuple(topk_ids.shape)}")
    if topk_weights.shape != topk_ids.shape:
        raise ValueError(f"topk_weights shape {tuple(topk_weights.shape)} != topk_ids shape "
                         f"{tuple(topk_ids.shape)}")
    if w.hidden_size % 32 or w.intermediate_size % 32:
        raise ValueError("hidden and intermediate sizes must be multiples of 32 (MXFP4 blocks)")


def _knobs(tiles: GemmTiles, k: int, dtype: torch.dtype) -> dict:
    if tiles.split_k != 1:
        raise ValueError("split_k is a GEMV knob; the grouped GEMM takes split_k=1")
    if tiles.decode not in DECODERS:
        raise ValueError(f"decode must be one of {sorted(DECODERS)}, got {tiles.decode!r}")
    decode = "bits" if dtype == torch.float32 else tiles.decode  # dot_scaled takes bf16/fp16 only
    return dict(BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k, EVEN_K=k % tiles.block_k == 0,
                DECODE=DECODERS[decode], num_warps=tiles.num_warps, num_stages=tiles.num_stages)


def moe_gate_up(x: torch.Tensor, sorted_ids: torch.Tensor, expert_ids: torch.Tensor, w: MoeWeights,
                top_k: int, block_m: int, tiles: GemmTiles, act: torch.Tensor) -> torch.Tensor:
    """act[slot] = swiglu(x[slot // k] @ W1_e^T + b1_e) for every routed slot (stage 2)."""
    h, inter = w.hidden_size, w.intermediate_size
    gu_bias = w.gate_up_bias if w.gate_up_bias is not None else x  # dummy pointer when absent
    moe_gate_up_kernel[(expert_ids.numel(), triton.cdiv(inter, tiles.block_n))](
        x, w.gate_up_blocks, w.gate_up_scales, gu_bias, act, sorted_ids, expert_ids,
        act.shape[0], h, h // 2, h // 32, inter, x.stride(0), act.stride(0), SWIGLU_ALPHA,
        SWIGLU_LIMIT, TOP_K=top_k, HAS_BIAS=w.gate_up_bias is not None, BLOCK_M=block_m,
        **_knobs(tiles, h, x.dtype))
    return act


def moe_down(act: torch.Tensor, sorted_ids: torch.Tensor, expert_ids: torch.Tensor,
             topk_weights: torch.Tensor, w: MoeWeights, block_m: int, tiles: GemmTiles,
             per_slot: torch.Tensor) -> torch.Tensor:
    """per_slot[slot] = weight[slot] * (act[slot] @ W2_e^T + b2_e), fp32 (stage 3)."""
    h, inter = w.hidden_size, w.intermediate_size
    dn_bias = w.down_bias if w.down_bias is not None else act
    moe_down_kernel[(expert_ids.numel(), triton.cdiv(h, tiles.block_n))](
        act, w.down_blocks, w.down_scales, dn_bias, topk_weights, per_slot, sorted_ids, expert_ids,
        act.shape[0], inter, inter // 2, inter // 32, h, act.stride(0), per_slot.stride(0),
        HAS_BIAS=w.down_bias is not None, BLOCK_M=block_m, **_knobs(tiles, inter, act.dtype))
    return per_slot


def gemv_routing(topk_ids: torch.Tensor, num_experts: int, block_m: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted_ids, expert_ids) for the GEMV: block_m 1 = topk_ids flat (slot = program, no launch);
    more = the align step's grouping, so slots sharing an expert read its weights once."""
    if block_m == 1:
        flat = topk_ids.reshape(-1)
        return flat, flat
    sorted_ids, expert_ids, _ = moe_align_block_size(topk_ids, num_experts, block_m)
    return sorted_ids, expert_ids


def _gemv_knobs(tiles: GemmTiles, block_m: int) -> dict:
    groups = tiles.block_k // 32
    if tiles.block_k % 32 or groups & (groups - 1) or tiles.block_n & (tiles.block_n - 1):
        raise ValueError(f"GEMV block_k must be 32 x a power of two and block_n a power of two, "
                         f"got {tiles.block_n}x{tiles.block_k}")
    if block_m & (block_m - 1):
        raise ValueError(f"GEMV block_m must be a power of two, got {block_m}")
    return dict(BLOCK_M=block_m, BLOCK_N=tiles.block_n, GROUPS=groups, DIRECT=block_m == 1,
                num_warps=tiles.num_warps, num_stages=tiles.num_stages)


def moe_gate_up_gemv(x: torch.Tensor, sorted_ids: torch.Tensor, expert_ids: torch.Tensor,
                     w: MoeWeights, top_k: int, block_m: int, tiles: GemmTiles,
                     act: torch.Tensor) -> torch.Tensor:
    """Stage 2 by the GEMV kernel (routing from `gemv_routing`); same result as `moe_gate_up`."""
    if tiles.split_k != 1:
        raise ValueError("the GEMV gate_up takes split_k=1 (SwiGLU needs the whole dot)")
    h, inter = w.hidden_size, w.intermediate_size
    gu_bias = w.gate_up_bias if w.gate_up_bias is not None else x
    moe_gate_up_gemv_kernel[(expert_ids.numel(), triton.cdiv(inter, tiles.block_n))](
        x, w.gate_up_blocks.view(torch.int32), w.gate_up_scales, gu_bias, act, sorted_ids, expert_ids,
        act.shape[0], h // 8, h // 32, inter, x.stride(0), act.stride(0), SWIGLU_ALPHA, SWIGLU_LIMIT,
        TOP_K=top_k, HAS_BIAS=w.gate_up_bias is not None, **_gemv_knobs(tiles, block_m))
    return act


def moe_down_gemv(act: torch.Tensor, sorted_ids: torch.Tensor, expert_ids: torch.Tensor,
                  topk_weights: torch.Tensor, w: MoeWeights, block_m: int, tiles: GemmTiles,
                  per_split: torch.Tensor) -> torch.Tensor:
    """Stage 3 by the GEMV kernel: per_split [T*k*split_k, H] fp32, row slot*split_k + split."""
    h, inter = w.hidden_size, w.intermediate_size
    if tiles.split_k < 1 or per_split.shape[0] != act.shape[0] * tiles.split_k:
        raise ValueError(f"per_split must have {act.shape[0]} x split_k={tiles.split_k} rows")
    dn_bias = w.down_bias if w.down_bias is not None else act
    moe_down_gemv_kernel[(expert_ids.numel(), triton.cdiv(h, tiles.block_n), tiles.split_k)](
        act, w.down_blocks.view(torch.int32), w.down_scales, dn_bias, topk_weights, per_split,
        sorted_ids, expert_ids, act.shape[0], inter // 8, inter // 32, h, act.stride(0),
        per_split.stride(0), HAS_BIAS=w.down_bias is not None, SPLIT_K=tiles.split_k,
        **_gemv_knobs(tiles, block_m))
    return per_split


def moe_sum(per_slot: torch.Tensor, out: torch.Tensor, top_k: int) -> torch.Tensor:
    """out[t] = sum of its k slots (stage 4)."""
    h = out.shape[1]
    sum_block = min(1024, triton.next_power_of_2(h))
    moe_sum_kernel[(out.shape[0], triton.cdiv(h, sum_block))](per_slot, out, h, TOP_K=top_k,
                                                               BLOCK_N=sum_block)
    return out


def fused_moe_mxfp4_rows(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                         w: MoeWeights, config: MoeConfig | None = None) -> tuple[torch.Tensor, int]:
    """The MoE before its per-token sum: (rows fp32 [T * r, H], r). Token t's output is the sum of rows
    t*r .. t*r + r - 1 in order (r = k, or k * split_k on the GEMV path), each already multiplied by its
    routing weight with the bias added. `moe_sum` (or the fused sum + add + RMSNorm kernel) adds them."""
    _check_inputs(x, topk_ids, topk_weights, w)
    t, k = topk_ids.shape
    cfg = config or pick_config(t, k, w.num_experts)
    x = x.contiguous()
    if t == 0:
        return torch.empty((0, w.hidden_size), dtype=torch.float32, device=x.device), k
    act = torch.empty((t * k, w.intermediate_size), dtype=x.dtype, device=x.device)
    if cfg.kernel == "gemv":
        sorted_ids, expert_ids = gemv_routing(topk_ids, w.num_experts, cfg.block_m)
        moe_gate_up_gemv(x, sorted_ids, expert_ids, w, k, cfg.block_m, cfg.gate_up_tiles(), act)
        splits = cfg.down_tiles().split_k
        per_slot = torch.empty((t * k * splits, w.hidden_size), dtype=torch.float32, device=x.device)
        moe_down_gemv(act, sorted_ids, expert_ids, topk_weights.contiguous(), w, cfg.block_m,
                      cfg.down_tiles(), per_slot)
        return per_slot, k * splits
    sorted_ids, expert_ids, _ = moe_align_block_size(topk_ids, w.num_experts, cfg.block_m)
    moe_gate_up(x, sorted_ids, expert_ids, w, k, cfg.block_m, cfg.gate_up_tiles(), act)
    per_slot = torch.empty((t * k, w.hidden_size), dtype=torch.float32, device=x.device)
    moe_down(act, sorted_ids, expert_ids, topk_weights.contiguous(), w, cfg.block_m, cfg.down_tiles(),
             per_slot)
    return per_slot, k


def fused_moe_mxfp4(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                    w: MoeWeights, config: MoeConfig | None = None,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """sum_j topk_weights[t, j] * Expert_{topk_ids[t, j]}(x[t]) for every token t -> [T, H] in x.dtype.

    Expert(x) = down(swiglu(gate_up(x) + b1)) + b2 with GPT-OSS's clamped, interleaved SwiGLU.
    topk_ids must hold distinct experts per token (as top-k routing gives). `out` ([T, H], x.dtype,
    contiguous) is written in full when given. `config` defaults to the table's bucket for T.
    """
    _check_inputs(x, topk_ids, topk_weights, w)
    if out is None:
        out = torch.empty_like(x)
    elif out.shape != x.shape or out.dtype != x.dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {x.dtype} tensor of shape {tuple(x.shape)}")
    if topk_ids.shape[0] == 0:
        return out
    rows, per_token = fused_moe_mxfp4_rows(x, topk_ids, topk_weights, w, config)
    return moe_sum(rows, out, per_token)


__all__ = [
    "KERNELS",
    "GemmTiles",
    "MoeConfig",
    "fused_moe_mxfp4",
    "fused_moe_mxfp4_rows",
    "gemv_routing",
    "load_config_table",
    "moe_down",
    "moe_down_gemv",
    "moe_gate_up",
    "moe_gate_up_gemv",
    "moe_sum",
    "pick_config",
    "use_config_table",
]
