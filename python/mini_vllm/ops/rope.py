"""GPT-OSS's YaRN rotary tables: inverse frequencies, attention scaling, and the cos/sin cache.

Why here: the RoPE kernel (and the torch reference) only gather rows of a precomputed fp32 cache
[max_pos, head_dim] = [cos | sin], so every YaRN detail lives in this one function. It reproduces
transformers' `_compute_yarn_parameters` (beta_fast/beta_slow correction range, linear ramp, truncate
flag - GPT-OSS ships truncate=False) and `GptOssRotaryEmbedding.forward` (cos/sin times the attention
factor 0.1*ln(factor)+1), computed in fp32 like transformers does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class YarnConfig:
    """GPT-OSS defaults (config.json rope_scaling / transformers' GptOssConfig)."""

    head_dim: int = 64
    theta: float = 150000.0
    factor: float = 32.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    original_max_position_embeddings: int = 4096
    truncate: bool = False
    attention_factor: float | None = None  # None: 0.1 * ln(factor) + 1, as transformers infers it

    @classmethod
    def from_hf(cls, config: dict) -> "YarnConfig":
        """From a GPT-OSS config.json dict (rope_scaling or rope_parameters, rope_theta, head_dim)."""
        rp = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
        return cls(head_dim=int(config.get("head_dim", 64)),
                   theta=float(rp.get("rope_theta", config.get("rope_theta", 150000.0))),
                   factor=float(rp.get("factor", 32.0)), beta_fast=float(rp.get("beta_fast") or 32.0),
                   beta_slow=float(rp.get("beta_slow") or 1.0),
                   original_max_position_embeddings=int(rp.get("original_max_position_embeddings", 4096)),
                   truncate=bool(rp.get("truncate", True)),
                   attention_factor=(float(rp["attention_factor"]) if rp.get("attention_factor") is not None
                                     else None))


def yarn_inv_freq(cfg: YarnConfig) -> tuple[torch.Tensor, float]:
    """(inv_freq fp32 [head_dim/2], attention_factor) exactly as transformers computes them."""
    dim, base = cfg.head_dim, cfg.theta

    def correction_dim(num_rotations: float) -> float:
        return (dim * math.log(cfg.original_max_position_embeddings / (num_rotations * 2 * math.pi))) / (
            2 * math.log(base))

    low, high = correction_dim(cfg.beta_fast), correction_dim(cfg.beta_slow)
    if cfg.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extrapolation_factor = 1 - ramp
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    inv_extra, inv_inter = 1.0 / pos_freqs, 1.0 / (cfg.factor * pos_freqs)
    inv_freq = inv_inter * (1 - extrapolation_factor) + inv_extra * extrapolation_factor
    attention_factor = cfg.attention_factor
    if attention_factor is None:
        attention_factor = 1.0 if cfg.factor <= 1 else 0.1 * math.log(cfg.factor) + 1.0
    return inv_freq, attention_factor


def cos_sin_cache(max_positions: int, cfg: YarnConfig = YarnConfig(),
                  device: torch.device | str | None = None) -> torch.Tensor:
    """fp32 [max_positions, head_dim]: cos in the first half, sin in the second, mscale applied."""
    inv_freq, scale = yarn_inv_freq(cfg)
    freqs = torch.arange(max_positions, dtype=torch.float32)[:, None] * inv_freq[None, :]
    return torch.cat((freqs.cos() * scale, freqs.sin() * scale), dim=-1).to(device)
