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
    """q [T, H, D] -> out [T, H*D]; keys/values read from the paged cache (already holding this step)."""
    t, h, d = q.shape
    kvh = k_cache.shape[-2]
    g = h // kvh
    out = q.new_empty(t, h * d)
    sink = sinks.float().view(1, kvh, g, 1).unsqueeze(-1)            # [1, KVH, G, 1, 1]
    for grp in meta.groups:
        b, ql = grp.batch, grp.q_len
        # whole blocks are gathered (contiguous rows), then viewed as [B, K, KVH, D]
        kt = k_cache[grp.block_table].float().view(b, -1, kvh, d).permute(0, 2, 3, 1)   # [B, KVH, D, K]
        vg = v_cache[grp.block_table].float().view(b, -1, kvh, d).transpose(1, 2)       # [B, KVH, K, D]
        mask = grp.mask_sliding if sliding else grp.mask_full          # [B, 1, 1, Q, K]
        qg = q[grp.start:grp.end].view(b, ql, kvh, g, d).float()
        rows = out[grp.start:grp.end].view(b, ql, h * d)
        # long prefills: bound the [B, H, Q, K] score tensor by splitting the queries
        step = max(1, _SCORE_ELEMS // (b * h * kt.shape[-1]))
        for q0 in range(0, ql, step):
            q1 = min(q0 + step, ql)
            n = q1 - q0
            qs = qg[:, q0:q1].permute(0, 2, 3, 1, 4).reshape(b, kvh, g * n, d)
            scores = torch.matmul(qs, kt).view(b, kvh, g, n, -1) * scale
            scores = scores.masked_fill(~mask[..., q0:q1, :], float("-inf"))
            combined = torch.cat([scores, sink.expand(b, kvh, g, n, 1)], dim=-1)
            probs = torch.softmax(combined, dim=-1)[..., :-1]          # the sink column is dropped
            og = torch.matmul(probs.reshape(b, kvh, g * n, -1), vg)    # [B, KVH, G*n, D]
            rows[:, q0:q1] = og.view(b, kvh, g, n, d).permute(0, 3, 1, 2, 4).reshape(b, n, h * d).to(out.dtype)
    return out
