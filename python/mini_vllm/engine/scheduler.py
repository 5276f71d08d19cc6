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

import time
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
        bs = self.blocks.block_size
        running = self.running
        i = 0
        while i < len(running) and budget > 0:
            seq = running[i]
            if seq.final_pending:     # async scheduling: its last token is on its way; nothing left to run
                i += 1
                continue
            end = len(seq.token_ids)
            if end - seq.num_computed_tokens > budget:
                end = seq.num_computed_tokens + budget
            # only a sequence crossing into a new block needs the block manager (most decodes do not)
            if end > len(seq.block_table) * bs and not self._make_room(seq, end):
                break   # seq itself was preempted: nothing newer is left to run
            n = end - seq.num_computed_tokens
            chosen.append(seq)
            counts.append(n)
            budget -= n
            i += 1
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            leader = seq.leader
            if leader is not None and leader.status is not Status.FINISHED and \
                    leader.num_computed_tokens < leader.num_prompt_tokens:
                break   # sibling sample: wait until the leader has cached the prompt
            if not self.blocks.allocate(seq):
                break
            self.waiting.popleft()
            if seq.req.scheduled is None:
                seq.req.scheduled = time.monotonic()
            seq.status = Status.RUNNING
            self.running.append(seq)
            n = min(seq.num_uncomputed, budget)
            chosen.append(seq)
            counts.append(n)
            budget -= n
        if _decodes_first(counts):
            return ScheduledBatch(chosen, counts)
        order = sorted(range(len(chosen)), key=lambda k: counts[k] != 1)   # decodes first, stable
        return ScheduledBatch([chosen[k] for k in order], [counts[k] for k in order])

    def _make_room(self, seq: Sequence, num_tokens: int) -> bool:
        """Blocks for seq's first num_tokens tokens, preempting the newest running sequences as needed.
        False when seq itself had to be preempted."""
        while not self.blocks.ensure(seq, num_tokens):
            victim = self.running[-1]
            self._preempt(victim)
            if victim is seq:
                return False
        return True

    def remove_finished(self, seqs: list[Sequence]) -> None:
        """`remove` for many sequences at once (one pass over `running`); blocks freed in `seqs` order."""
        gone = {id(s) for s in seqs}
        kept = [s for s in self.running if id(s) not in gone]
        if len(kept) + len(seqs) != len(self.running):     # some were not running: the general path
            for s in seqs:
                self.remove(s)
            return
        self.running = kept
        for s in seqs:
            self.blocks.free_seq(s)

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


def _decodes_first(counts: list[int]) -> bool:
    """True when no decode (1 token) follows a longer chunk, i.e. the batch is already in order."""
    ones = counts.count(1)
    return counts[:ones].count(1) == ones
