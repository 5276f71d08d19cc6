"""Paged attention with sinks and sliding windows, in plain torch (the CPU path and the reference).

The KV cache of a layer is [num_blocks, block_size, num_kv_heads, head_dim], the layout FlashAttention-3's
paged kernel reads, so the CUDA path can swap this module's `paged_attention` for FA3 without moving data.
A step's tokens are laid out in *groups*: one group holds all decode tokens (B sequences x 1 query),
and each prefill chunk is a group of its own (1 sequence x Q queries). Per group the runner
precomputes which cache slots hold each sequence's keys and which (query, key) pairs may attend -
once per step, shared by every layer.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

_SCORE_ELEMS = 32 * 1024 * 1024     # bound on one attention score tensor (elements)


@dataclass
class AttnGroup:
    start: int                      # first token (row of the flattened batch) of the group
    batch: int                      # sequences in the group
    q_len: int                      # queries per sequence (1 for decodes)
    kv_slots: torch.Tensor          # [B, K] flat cache slot of each key position (padding: 0)
    mask_full: torch.Tensor         # [B, 1, 1, Q, K] bool: causal and within the context
    mask_sliding: torch.Tensor      # [B, 1, 1, Q, K] bool: additionally q - k < window

    @property
    def end(self) -> int:
        return self.start + self.batch * self.q_len

    def to(self, device: torch.device) -> "AttnGroup":
        if self.kv_slots.device == device:
            return self
        return AttnGroup(self.start, self.batch, self.q_len, self.kv_slots.to(device),
                         self.mask_full.to(device), self.mask_sliding.to(device))


@dataclass
class AttnMetadata:
    positions: torch.Tensor               # [T] position of each token in its sequence
    slot_mapping: torch.Tensor            # [T] flat cache slot each token's K/V is written to
    groups: list[AttnGroup] = field(default_factory=list)


def build_group(
    start: int, q_positions: torch.Tensor, context_lens: list[int], block_tables: list[list[int]],
    block_size: int, window: int,
) -> AttnGroup:
    """q_positions [B, Q]: positions of the group's queries; context_lens: keys per sequence."""
    batch, q_len = q_positions.shape
    k_max = max(context_lens)
    n_blocks = (k_max + block_size - 1) // block_size
    table = torch.zeros(batch, n_blocks, dtype=torch.long)
    for i, bt in enumerate(block_tables):
        nb = min(len(bt), n_blocks)
        table[i, :nb] = torch.tensor(bt[:nb], dtype=torch.long)
    kpos = torch.arange(k_max)
    slots = table[:, kpos // block_size] * block_size + (kpos % block_size)
    ctx = torch.tensor(context_lens, dtype=torch.long)
    qpos = q_positions.unsqueeze(-1)                                   # [B, Q, 1]
    valid = (kpos.view(1, 1, -1) <= qpos) & (kpos.view(1, 1, -1) < ctx.view(-1, 1, 1))
    sliding = valid & (qpos - kpos.view(1, 1, -1) < window) if window > 0 else valid
    return AttnGroup(start, batch, q_len, slots,
                     valid.view(batch, 1, 1, q_len, k_max), sliding.view(batch, 1, 1, q_len, k_max))


def write_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Store this step's keys/values [T, KVH, D] into their cache slots."""
    kvh, d = k_cache.shape[-2:]
    k_cache.view(-1, kvh, d).index_copy_(0, slot_mapping, k.to(k_cache.dtype))
    v_cache.view(-1, kvh, d).index_copy_(0, slot_mapping, v.to(v_cache.dtype))


def paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, sinks: torch.Tensor,
    meta: AttnMetadata, sliding: bool, scale: float,
) -> torch.Tensor:
    """q [T, H, D] -> out [T, H*D]; keys/values read from the paged cache (already holding this step)."""
    t, h, d = q.shape
    kvh = k_cache.shape[-2]
    g = h // kvh
    flat_k = k_cache.view(-1, kvh, d)
    flat_v = v_cache.view(-1, kvh, d)
    out = q.new_empty(t, h * d)
    sink = sinks.float().view(1, kvh, g, 1, 1)
    for grp in meta.groups:
        kg = flat_k[grp.kv_slots].float()                              # [B, K, KVH, D]
        vg = flat_v[grp.kv_slots].float()
        mask = grp.mask_sliding if sliding else grp.mask_full
        qg = q[grp.start:grp.end].view(grp.batch, grp.q_len, kvh, g, d).float()
        # long prefills: bound the [B, H, Q, K] score tensor by splitting the queries
        step = max(1, _SCORE_ELEMS // (grp.batch * h * kg.shape[1]))
        for q0 in range(0, grp.q_len, step):
            q1 = min(q0 + step, grp.q_len)
            scores = torch.einsum("bqhgd,bkhd->bhgqk", qg[:, q0:q1], kg) * scale
            scores = scores.masked_fill(~mask[..., q0:q1, :], float("-inf"))
            combined = torch.cat([scores, sink.expand(grp.batch, kvh, g, q1 - q0, 1)], dim=-1)
            probs = torch.softmax(combined, dim=-1)[..., :-1]          # the sink column is dropped
            og = torch.einsum("bhgqk,bkhd->bqhgd", probs, vg)
            rows = out[grp.start:grp.end].view(grp.batch, grp.q_len, h * d)
            rows[:, q0:q1] = og.reshape(grp.batch, q1 - q0, h * d).to(out.dtype)
    return out
