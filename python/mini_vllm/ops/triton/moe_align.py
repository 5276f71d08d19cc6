"""Group routed tokens by expert for the grouped GEMM (our take on vLLM's moe_align_block_size).

Why a Triton kernel: the decode step at batch 1 is launch-bound, and the torch version of this
(scatter_add counts, stable sort, cumsum, searchsorted, scatter) is ~10 launches. One launch of E
programs does it without a host sync: every program histograms all slots (cheap: a [CHUNK, E]
compare), so program e knows where its run starts and writes only its own slots, padding and block
ids - the work is spread over E SMs instead of one program looping over the experts (slow past ~10k
slots). The output sizes depend only on (T*k, E, BLOCK_M), so the grouped GEMM's grid is fixed
before the routing is known (blocks past the end get expert -1 and exit).

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

ALIGN_CHUNK = 256  # slots per step: the [CHUNK, E] compare tile stays in registers


def max_padded_rows(num_slots: int, num_experts: int, block_m: int) -> int:
    """Upper bound on padded rows: every non-empty expert wastes at most BLOCK_M-1 rows."""
    used_experts = min(num_experts, num_slots)
    return triton.cdiv(num_slots + used_experts * (block_m - 1), block_m) * block_m


@triton.jit
def _moe_align_kernel(topk_ids_ptr, sorted_ids_ptr, expert_ids_ptr, num_padded_ptr,
                      num_slots, max_blocks,
                      E_P2: tl.constexpr, BLOCK_M: tl.constexpr, CHUNK: tl.constexpr):
    """Program e: histogram of all slots (in every program: no second launch), then expert e's run."""
    e = tl.program_id(0)
    lane = tl.arange(0, CHUNK)
    experts = tl.arange(0, E_P2)
    counts = tl.zeros([E_P2], dtype=tl.int32)
    for c0 in range(0, num_slots, CHUNK):
        ids = tl.load(topk_ids_ptr + c0 + lane, mask=c0 + lane < num_slots, other=-1)
        counts += tl.sum((ids[:, None] == experts[None, :]).to(tl.int32), axis=0)
    padded = tl.cdiv(counts, BLOCK_M) * BLOCK_M
    start = tl.sum(tl.where(experts < e, padded, 0), axis=0)
    total = tl.sum(padded, axis=0)
    mine = tl.sum(tl.where(experts == e, counts, 0), axis=0)
    at = start  # my slots in ascending order (stable within the expert)
    for c0 in range(0, num_slots, CHUNK):
        slots = c0 + lane
        hit = tl.load(topk_ids_ptr + slots, mask=slots < num_slots, other=-1) == e
        hit_i = hit.to(tl.int32)
        tl.store(sorted_ids_ptr + at + tl.cumsum(hit_i, axis=0) - 1, slots, mask=hit)
        at += tl.sum(hit_i, axis=0)
    pad_lane = tl.arange(0, BLOCK_M)
    my_padded = tl.cdiv(mine, BLOCK_M) * BLOCK_M
    tl.store(sorted_ids_ptr + start + mine + pad_lane, tl.zeros_like(pad_lane) + num_slots,
             mask=pad_lane < my_padded - mine)
    first, end = start // BLOCK_M, (start + my_padded) // BLOCK_M
    for b0 in range(first, end, CHUNK):
        tl.store(expert_ids_ptr + b0 + lane, tl.zeros_like(lane) + e, mask=b0 + lane < end)
    if e == 0:  # blocks past the used ones, and the used row count
        for b0 in range(total // BLOCK_M, max_blocks, CHUNK):
            tl.store(expert_ids_ptr + b0 + lane, tl.zeros_like(lane) - 1, mask=b0 + lane < max_blocks)
        tl.store(num_padded_ptr, total)


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
    _moe_align_kernel[(num_experts,)](flat, sorted_ids, expert_ids, num_padded, num_slots, max_blocks,
                                      E_P2=triton.next_power_of_2(max(num_experts, 2)),
                                      BLOCK_M=block_m, CHUNK=ALIGN_CHUNK)
    return sorted_ids, expert_ids, num_padded
