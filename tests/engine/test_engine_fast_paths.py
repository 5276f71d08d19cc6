"""The engine's per-step fast paths give exactly what the straightforward code gave.

build_step_inputs (decode fast path, all_decode/sample_all flags), the scheduler's "already in order"
check and batched removal, and the lazily sliced cumulative outputs are checked against reference
versions written the obvious way, over random inputs (seeded, so a failure reproduces).
"""
from __future__ import annotations

import copy
import dataclasses
import pickle
import random

import numpy as np
import pytest

from mini_vllm.engine.block_manager import BlockManager
from mini_vllm.engine.block_tables import BlockTableArray
from mini_vllm.engine.model_runner import GroupSpec, StepInputs, build_step_inputs
from mini_vllm.engine.output_builder import SnapshotOutput, request_output
from mini_vllm.engine.outputs import CompletionOutput, TokenLogprob
from mini_vllm.engine.scheduler import ScheduledBatch, Scheduler, _decodes_first
from mini_vllm.engine.sequence import Request, Sequence, Status
from mini_vllm.sampling_params import SamplingParams


def _reference_inputs(batch: ScheduledBatch, bs: int) -> StepInputs:
    """build_step_inputs as first written: per-token generator expressions for every sequence."""
    ids, pos, slots, rows, groups = [], [], [], [], []
    decode = GroupSpec(0, [], [], [])
    for seq, n in zip(batch.seqs, batch.num_new):
        start, end, bt = seq.num_computed_tokens, seq.num_computed_tokens + n, seq.block_table
        row0 = len(ids)
        ids.extend(seq.token_ids[start:end])
        pos.extend(range(start, end))
        slots.extend(bt[p // bs] * bs + p % bs for p in range(start, end))
        rows.append(row0 + n - 1 if end == len(seq.token_ids) else -1)
        if n == 1 and not groups:
            decode.q_positions.append([start])
            decode.context_lens.append(end)
            decode.block_tables.append(bt)
        else:
            groups.append(GroupSpec(row0, [list(range(start, end))], [end], [bt]))
    if decode.context_lens:
        groups.insert(0, decode)
    return StepInputs(ids, pos, slots, groups, rows)


def _random_batch(rng: random.Random, bs: int, decodes_only: bool) -> ScheduledBatch:
    seqs, news = [], []
    blocks = list(range(4096))
    rng.shuffle(blocks)                                  # block tables of arbitrary, non-contiguous ids
    for k in range(rng.randint(1, 40)):
        total = rng.randint(1, 1100)
        req = Request(f"r{k}", [rng.randrange(800) for _ in range(total)], SamplingParams())
        seq = Sequence(req, 0, k, 16)
        if decodes_only or rng.random() < 0.6:
            n = 1
            seq.num_computed_tokens = total - 1 if rng.random() < 0.9 else rng.randrange(total)  # 1-token chunk
        else:
            seq.num_computed_tokens = rng.randrange(total)
            n = rng.randint(1, total - seq.num_computed_tokens)
        nb = -(-(seq.num_computed_tokens + n) // bs)
        seq.block_table = [blocks.pop() for _ in range(nb + rng.randint(0, 2))]
        seqs.append(seq)
        news.append(n)
    return ScheduledBatch(seqs, news)


@pytest.mark.parametrize("decodes_only", [True, False])
def test_step_inputs_equal_the_reference_formula(decodes_only):
    rng = random.Random(1234 + decodes_only)
    for bs in (16, 7):
        for _ in range(150):
            batch = _random_batch(rng, bs, decodes_only)
            got, want = build_step_inputs(batch, bs), _reference_inputs(batch, bs)
            for f in ("input_ids", "positions", "slot_mapping", "groups", "sample_rows"):
                assert getattr(got, f) == getattr(want, f), f
            q_lens = [len(q) for g in got.groups for q in g.q_positions]
            assert got.all_decode == (len(got.groups) == 1 and all(q == 1 for q in q_lens))
            assert got.sample_all == (got.all_decode and got.sample_rows == list(range(len(got.input_ids))))
            assert pickle.loads(pickle.dumps(got)) == got   # broadcast to TP workers


def test_decodes_first_matches_a_stable_sort():
    rng = random.Random(7)
    for _ in range(2000):
        counts = [rng.choice([1, 1, 1, 2, 5]) for _ in range(rng.randint(0, 12))]
        ordered = sorted(counts, key=lambda c: c != 1)
        assert _decodes_first(counts) == (ordered == counts)


def _running(blocks: BlockManager, sched: Scheduler, n: int) -> list[Sequence]:
    seqs = []
    for k in range(n):
        seq = Sequence(Request(f"r{k}", list(range(k, k + 20)), SamplingParams()), 0, k, 4)
        sched.add(seq)
        seqs.append(seq)
    sched.schedule()
    return seqs


def test_remove_finished_equals_removing_one_by_one():
    states = []
    for batched in (False, True):
        blocks = BlockManager(64, 4)
        sched = Scheduler(blocks, 16, 4096)
        seqs = _running(blocks, sched, 8)
        done = [seqs[5], seqs[1], seqs[6]]
        if batched:
            sched.remove_finished(done)
        else:
            for s in done:
                sched.remove(s)
        states.append(([s.seq_id for s in sched.running], list(blocks.free), list(blocks.ref_count)))
    assert states[0] == states[1]
    assert len(states[0][0]) == 5


def test_decode_blocks_are_taken_only_at_block_boundaries():
    blocks = BlockManager(64, 4)
    sched = Scheduler(blocks, 16, 4096)
    seq = _running(blocks, sched, 1)[0]                     # 20 prompt tokens: 5 full blocks
    seq.num_computed_tokens = 20
    for step in range(9):
        seq.token_ids.append(1)
        batch = sched.schedule()
        assert batch.num_new == [1]
        assert len(seq.block_table) == -(-len(seq.token_ids) // 4)
        seq.num_computed_tokens += 1


def _req_with_outputs(n_out: int, logprobs: bool) -> tuple[Request, Sequence]:
    req = Request("r", [5, 6, 7], SamplingParams(logprobs=1 if logprobs else None))
    seq = Sequence(req, 0, 0, 100)
    req.seqs.append(seq)
    for t in range(n_out):
        seq.token_ids.append(100 + t)
        seq.text += f"<{t}>"
        if seq.logprobs is not None:
            seq.logprobs.append(TokenLogprob(100 + t, f"<{t}>", -0.5, []))
    return req, seq


@pytest.mark.parametrize("logprobs", [False, True])
def test_cumulative_outputs_are_snapshots(logprobs):
    req, seq = _req_with_outputs(3, logprobs)
    first = request_output(req).outputs[0]
    seq.token_ids.extend([1, 2, 3])                       # generation goes on after the output was made
    if seq.logprobs is not None:
        seq.logprobs.append(TokenLogprob(1, "x", -1.0, []))
    seq.text += "later"
    assert first.token_ids == [100, 101, 102]
    assert first.token_ids_delta == [100, 101, 102]
    assert first.text == "<0><1><2>" and first.text_delta == "<0><1><2>"
    if logprobs:
        assert [lp.token_id for lp in first.logprobs] == [100, 101, 102]
    else:
        assert first.logprobs is None and first.logprobs_delta is None
    second = request_output(req).outputs[0]
    assert second.token_ids == [100, 101, 102, 1, 2, 3] and second.token_ids_delta == [1, 2, 3]
    assert second.text_delta == "later"
    assert first.token_ids is first.token_ids             # materialised once, then cached


def test_snapshot_output_behaves_as_a_completion_output():
    req, seq = _req_with_outputs(2, True)
    co = request_output(req).outputs[0]
    plain = CompletionOutput(**{f.name: getattr(co, f.name) for f in dataclasses.fields(CompletionOutput)})
    assert isinstance(co, CompletionOutput)
    assert co == plain and plain == co
    assert co != dataclasses.replace(plain, token_ids=[9])
    again = pickle.loads(pickle.dumps(co))
    assert type(again) is CompletionOutput and again == co
    assert copy.deepcopy(co) == co
    assert dataclasses.asdict(co)["token_ids"] == [100, 101]
    co.token_ids = [42]                                   # plain assignment still works
    assert co.token_ids == [42]
    assert dataclasses.replace(co, index=3).token_ids == [42]
    assert SnapshotOutput.__hash__ is None


def test_engine_deltas_add_up_to_the_cumulative_output(make_engine, texts):
    eng = make_engine(max_num_seqs=4, kv_cache_memory_gb=0.01)
    p = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=2)
    ids = eng.tokenizer.encode(texts[1])
    eng.add_request("a", ids, p)
    seen, text, lps, outs = [], "", [], []
    while eng.has_unfinished():
        for out in eng.step():
            co = out.outputs[0]
            seen += co.token_ids_delta
            text += co.text_delta
            lps += co.logprobs_delta
            outs.append((co, list(seen)))
    final = outs[-1][0]
    assert final.finish_reason == "length" and len(final.token_ids) == 24
    assert final.token_ids == seen and final.text == text and final.logprobs == lps
    for co, upto in outs:                                  # read late: each still shows its own moment
        assert co.token_ids == upto and len(co.logprobs) == len(upto)
    assert eng.stats().generation_tokens_total == 24


def _padded(tables: list[list[int]], width: int) -> np.ndarray:
    out = np.zeros((len(tables), width), dtype=np.int32)
    for i, bt in enumerate(tables):
        out[i, :min(len(bt), width)] = bt[:width]
    return out


def test_block_table_array_tracks_the_lists_through_preemption_and_reuse(make_engine, texts):
    """Every step's block_table_array equals the padded block tables; a small KV cache forces
    preemptions, chunked prefills and row reuse."""
    eng = make_engine(max_num_seqs=70, kv_cache_memory_gb=0.0015, max_num_batched_tokens=96)
    execute, checked = eng.runner.execute, [0]

    def checking(inp):
        tables = [bt for g in sorted(inp.groups, key=lambda g: g.start) for bt in g.block_tables]
        ctx = [c for g in sorted(inp.groups, key=lambda g: g.start) for c in g.context_lens]
        width = max(1, -(-max(ctx) // eng.args.block_size))
        assert inp.block_table_array.dtype == np.int32
        assert np.array_equal(inp.block_table_array, _padded(tables, width))
        checked[0] += 1
        return execute(inp)

    eng.runner.execute = checking
    rng = random.Random(3)
    prompts = [eng.tokenizer.encode(texts[k % len(texts)])[:rng.randint(3, 40)] for k in range(70)]
    outs = eng.generate(prompts, SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))
    assert all(len(o.outputs[0].token_ids) == 12 for o in outs)
    assert eng.scheduler.num_preemptions > 0 and checked[0] > 10
    assert not eng.blocks.tables.array.any()                 # every row released and zeroed


def test_block_table_array_grows_rows_and_columns():
    arr = BlockTableArray(max_blocks_per_seq=2, rows=1)
    seqs = [Sequence(Request(f"r{k}", [1], SamplingParams()), 0, k, 4) for k in range(3)]
    for k, s in enumerate(seqs):
        s.block_table = list(range(10 * k, 10 * k + k + 1))
        arr.write(s)
    seqs[2].block_table += [7, 8, 9]                           # wider than max_blocks_per_seq
    arr.write(seqs[2], 3)
    got = arr.gather([seqs[2], seqs[0], seqs[1]], 6)
    assert np.array_equal(got, _padded([s.block_table for s in (seqs[2], seqs[0], seqs[1])], 6))
    arr.release(seqs[1])
    assert seqs[1].block_row == -1 and not arr.array[1].any()
