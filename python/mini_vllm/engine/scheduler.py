"""Continuous batching: which sequences run this step, and how many tokens each.

Policy (per step, within max_num_batched_tokens and max_num_seqs):
1. Running sequences first, oldest first: a decode takes 1 token, an unfinished prefill its next chunk.
   When the KV cache has no block for a running sequence, the newest running sequence is preempted
   (blocks freed, sent back to the front of the queue, recomputed later - its tokens are kept).
2. Then waiting sequences, first come first served: blocks for all their tokens (prefix-cache hits
   reused), and a first chunk of whatever budget is left (chunked prefill).
The step's batch lists (sequence, number of new tokens); decodes (1 token) come first.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from mini_vllm.engine.block_manager import BlockManager
from mini_vllm.engine.sequence import Sequence, Status


@dataclass
class ScheduledBatch:
    seqs: list[Sequence]
    num_new: list[int]

    def __len__(self) -> int:
        return len(self.seqs)


class Scheduler:
    def __init__(self, blocks: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.max_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free_seq(seq)
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def schedule(self) -> ScheduledBatch:
        budget = self.max_tokens
        chosen: list[Sequence] = []
        counts: list[int] = []
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_uncomputed, budget)
            while not self.blocks.ensure(seq, seq.num_computed_tokens + n):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            else:
                chosen.append(seq)
                counts.append(n)
                budget -= n
                i += 1
                continue
            break   # seq itself was preempted: nothing newer is left to run
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            leader = seq.leader
            if leader is not None and leader.status is not Status.FINISHED and \
                    leader.num_computed_tokens < leader.num_prompt_tokens:
                break   # sibling sample: wait until the leader has cached the prompt
            if not self.blocks.allocate(seq):
                break
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            n = min(seq.num_uncomputed, budget)
            chosen.append(seq)
            counts.append(n)
            budget -= n
        order = sorted(range(len(chosen)), key=lambda k: counts[k] != 1)   # decodes first, stable
        return ScheduledBatch([chosen[k] for k in order], [counts[k] for k in order])

    def remove(self, seq: Sequence) -> None:
        """Drop a finished/aborted sequence and free its blocks now."""
        if seq in self.running:
            self.running.remove(seq)
            self.blocks.free_seq(seq)
        else:
            try:
                self.waiting.remove(seq)
            except ValueError:
                pass
