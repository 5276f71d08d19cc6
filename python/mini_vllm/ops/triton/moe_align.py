"""Group routed tokens by expert for the grouped GEMM (our take on vLLM's moe_align_block_size).

Why a Triton kernel: the decode step at batch 1 is launch-bound, and the torch version of this
(scatter_add counts, stable sort, cumsum, searchsorted, scatter) is ~10 launches. One program does it
in one launch, without a host sync: the output sizes depend only on (T*k, E, BLOCK_M), so the grouped
GEMM's grid is fixed before the routing is known (blocks past the end get expert -1 and exit).

Output, for flat routing slots s = t*k + j (token t, its j-th expert):
  sorted_ids [max_padded] int32: slots grouped by expert (ascending expert, then ascending slot), each
      expert's run padded with the sentinel T*k up to a multiple of BLOCK_M;
  expert_ids [max_blocks] int32: the expert of each BLOCK_M-row block, -1 past the used blocks;
  num_padded [1] int32: rows used (multiple of BLOCK_M).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


def max_padded_rows(num_slots: int, num_experts: int, block_m: int) -> int:
    """Upper bound on padded rows: every non-empty expert wastes at most BLOCK_M-1 rows."""
    used_experts = min(num_experts, num_slots)
    return triton.cdiv(num_slots + used_experts * (block_m - 1), block_m) * block_m


@triton.jit
def _moe_align_kernel(topk_ids_ptr, sorted_ids_ptr, expert_ids_ptr, num_padded_ptr,
                      num_slots, num_experts, max_blocks,
                      BLOCK_M: tl.constexpr, SLOTS_P2: tl.constexpr, BLOCKS_P2: tl.constexpr):
    slots = tl.arange(0, SLOTS_P2)
    slot_ok = slots < num_slots
    ids = tl.load(topk_ids_ptr + slots, mask=slot_ok, other=-1)
    blk = tl.arange(0, BLOCKS_P2)
    blk_expert = tl.full([BLOCKS_P2], -1, tl.int32)
    pad_lane = tl.arange(0, BLOCK_M)
    start = 0
    for e in range(0, num_experts):
        hit = (ids == e) & slot_ok
        hit_i = hit.to(tl.int32)
        count = tl.sum(hit_i, axis=0)
        rank = tl.cumsum(hit_i, axis=0) - 1
        tl.store(sorted_ids_ptr + start + rank, slots, mask=hit)
        padded = tl.cdiv(count, BLOCK_M) * BLOCK_M
        tl.store(sorted_ids_ptr + start + count + pad_lane, tl.zeros_like(pad_lane) + num_slots,
                 mask=pad_lane < padded - count)
        b0 = start // BLOCK_M
        blk_expert = tl.where((blk >= b0) & (blk < b0 + padded // BLOCK_M), e, blk_expert)
        start += padded
    tl.store(expert_ids_ptr + blk, blk_expert, mask=blk < max_blocks)
    tl.store(num_padded_ptr, start)


def moe_align_block_size(topk_ids: torch.Tensor, num_experts: int, block_m: int
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (sorted_ids, expert_ids, num_padded) for topk_ids [T, k]; see the module docstring."""
    if topk_ids.dim() != 2:
        raise ValueError(f"topk_ids must be [T, k], got shape {tuple(topk_ids.shape)}")
    num_slots = topk_ids.numel()
    max_rows = max_padded_rows(num_slots, num_experts, block_m)
    max_blocks = max_rows // block_m
    dev = topk_ids.device
    sorted_ids = torch.empty(max_rows, dtype=torch.int32, device=dev)
    expert_ids = torch.empty(max_blocks, dtype=torch.int32, device=dev)
    num_padded = torch.empty(1, dtype=torch.int32, device=dev)
    flat = topk_ids.reshape(-1).to(torch.int32)
    _moe_align_kernel[(1,)](flat, sorted_ids, expert_ids, num_padded, num_slots, num_experts,
                            max_blocks, BLOCK_M=block_m,
                            SLOTS_P2=triton.next_power_of_2(max(num_slots, 2)),
                            BLOCKS_P2=triton.next_power_of_2(max(max_blocks, 2)))
    return sorted_ids, expert_ids, num_padded
