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

from mini_vllm.ops import reference


@dataclass
class AttnGroup:
    start: int                      # first token (row of the flattened batch) of the group
    batch: int                      # sequences in the group
    q_len: int                      # queries per sequence (1 for decodes)
    block_table: torch.Tensor       # [B, nb] cache blocks of each sequence (padding: block 0); K = nb * block_size
    mask_full: torch.Tensor         # [B, 1, 1, Q, K] bool: causal and within the context
    mask_sliding: torch.Tensor      # [B, 1, 1, Q, K] bool: additionally q - k < window

    @property
    def end(self) -> int:
        return self.start + self.batch * self.q_len

    def to(self, device: torch.device) -> "AttnGroup":
        if self.block_table.device == device:
            return self
        return AttnGroup(self.start, self.batch, self.q_len, self.block_table.to(device),
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
    kpos = torch.arange(n_blocks * block_size)
    ctx = torch.tensor(context_lens, dtype=torch.long)
    qpos = q_positions.unsqueeze(-1)                                   # [B, Q, 1]
    valid = (kpos.view(1, 1, -1) <= qpos) & (kpos.view(1, 1, -1) < ctx.view(-1, 1, 1))
    sliding = valid & (qpos - kpos.view(1, 1, -1) < window) if window > 0 else valid
    k = kpos.numel()
    return AttnGroup(start, batch, q_len, table, valid.view(batch, 1, 1, q_len, k), sliding.view(batch, 1, 1, q_len, k))


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
    """q [T, H, D] -> out [T, H*D]; keys/values read from the paged cache (already holding this step).

    Per group: whole blocks gathered (contiguous rows) as [B, K, KVH, D], then the one torch attention of
    ops/reference.py with the group's precomputed mask."""
    t, h, d = q.shape
    kvh = k_cache.shape[-2]
    out = q.new_empty(t, h, d)
    for grp in meta.groups:
        b, ql = grp.batch, grp.q_len
        k = k_cache[grp.block_table].view(b, -1, kvh, d)
        v = v_cache[grp.block_table].view(b, -1, kvh, d)
        mask = (grp.mask_sliding if sliding else grp.mask_full).view(b, ql, -1)     # [B, Q, K]
        reference.attention(q[grp.start:grp.end].view(b, ql, h, d), k, v, mask, sinks, scale,
                            out[grp.start:grp.end].view(b, ql, h, d))
    return out.view(t, h * d)
