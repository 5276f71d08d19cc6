"""Block manager and scheduler mechanics: ref counts, prefix-cache hits and revival, preemption order."""
from __future__ import annotations

from mini_vllm.engine.block_manager import BlockManager
from mini_vllm.engine.scheduler import Scheduler
from mini_vllm.engine.sequence import Request, Sequence
from mini_vllm.sampling_params import SamplingParams


def seq(tokens: list[int], sid: int = 0) -> Sequence:
    return Sequence(Request(f"r{sid}", tokens, SamplingParams()), 0, sid, 100)


def compute_all(bm: BlockManager, s: Sequence) -> None:
    s.num_computed_tokens = len(s)
    bm.register_full_blocks(s)


def test_prefix_hits_share_blocks_and_survive_free_until_reused():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq(list(range(10)))                 # 2 full blocks + 2 tokens
    assert bm.allocate(a) and len(a.block_table) == 3 and a.num_computed_tokens == 0
    compute_all(bm, a)
    b = seq(list(range(8)) + [99, 98, 97], 1)
    assert bm.allocate(b)
    assert b.block_table[:2] == a.block_table[:2] and b.num_computed_tokens == 8
    assert bm.ref_count[a.block_table[0]] == 2
    bm.free_seq(a)
    bm.free_seq(b)
    assert bm.num_free == 8 and bm.usage() == 0.0
    c = seq(list(range(8)) + [5], 2)         # revived from the free list
    assert bm.allocate(c) and c.num_computed_tokens == 8
    assert bm.hits == 16 and bm.queries == 10 + 11 + 9


def test_whole_prompt_cached_still_computes_the_last_token_and_collisions_are_checked():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq(list(range(8)))
    bm.allocate(a)
    compute_all(bm, a)
    b = seq(list(range(8)), 1)
    bm.allocate(b)
    assert b.num_computed_tokens == 4        # the last block is recomputed so the last token gets logits
    bm.block_tokens[a.block_table[0]] = (7, 7, 7, 7)   # a forged collision must not be served
    c = seq(list(range(8)), 2)
    bm.allocate(c)
    assert c.num_computed_tokens == 0


def test_disabled_prefix_cache_never_hits():
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    a = seq(list(range(9)))
    bm.allocate(a)
    compute_all(bm, a)
    b = seq(list(range(9)), 1)
    bm.allocate(b)
    assert b.num_computed_tokens == 0 and bm.hits == 0


def test_scheduler_chunks_prefill_and_preempts_the_newest():
    bm = BlockManager(num_blocks=4, block_size=4)
    sch = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=6)
    a, b = seq(list(range(7))), seq(list(range(100, 107)), 1)
    sch.add(a)
    sch.add(b)

    def run(batch, sampled: set) -> None:      # what the engine does after the model step
        for s, n in zip(batch.seqs, batch.num_new):
            s.num_computed_tokens += n
            if s in sampled:
                s.token_ids.append(1)

    batch = sch.schedule()
    assert batch.seqs == [a] and batch.num_new == [6]            # a chunk of the token budget; b waits
    run(batch, set())
    batch = sch.schedule()
    assert batch.seqs == [a, b] and batch.num_new == [1, 5]      # a's last prompt token (a decode first), b's chunk
    run(batch, {a})
    batch = sch.schedule()
    assert batch.seqs == [a, b] and batch.num_new == [1, 2]
    run(batch, {a, b})
    assert len(a) == 9 and bm.num_free == 0
    batch = sch.schedule()                                       # a needs a 3rd block: b (newest) is preempted
    assert sch.num_preemptions == 1 and list(sch.waiting) == [b] and b.block_table == []
    assert b.num_computed_tokens == 0 and len(b) == 8            # tokens kept, recomputed later
    assert batch.seqs == [a] and len(a.block_table) == 3
