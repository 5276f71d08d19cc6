"""Async scheduling (engine/async_step.py) gives exactly what the synchronous engine gives.

On the CPU every op is synchronous, so nothing overlaps here; what these tests check is the bookkeeping
the GPU relies on: placeholder ids resolved from the previous step's samples (decodes, a prefill's first
token, chunked prefills beside decodes), tokens sampled one step late put in place, stops (eos, stop ids,
stop strings, max_tokens, max_model_len) that drop the token already launched, n > 1 with prefix caching,
seeded sampling, logprobs, and aborts while a step is in flight.
"""
from __future__ import annotations

import pytest
import torch

from mini_vllm.engine.placeholders import resolve_placeholders
from mini_vllm.sampling_params import SamplingParams


def _run(make_engine, prompts, params, **kw):
    eng = make_engine(**kw)
    outs = eng.generate(prompts, params)
    return eng, [[(c.token_ids, c.text, c.finish_reason) for c in o.outputs] for o in outs]


CASES = {
    "greedy": SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True),
    "eos+stop-ids": SamplingParams(temperature=0.0, max_tokens=40, stop_token_ids=[17, 33]),
    "stop-string": SamplingParams(temperature=0.0, max_tokens=30, stop=["e", "th"], ignore_eos=True),
    "seeded-n2": SamplingParams(temperature=0.9, top_p=0.9, max_tokens=10, n=2, seed=5, ignore_eos=True),
    "logprobs": SamplingParams(temperature=0.0, max_tokens=6, logprobs=3, ignore_eos=True),
    "one-token": SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_async_equals_sync(make_engine, texts, case):
    eng0 = make_engine()
    prompts = [eng0.tokenizer.encode(t) for t in texts]
    # small chunked-prefill budget: steps mix decodes with prefill chunks of other prompts
    kw = dict(max_num_batched_tokens=24, max_num_seqs=3)
    sync_eng, want = _run(make_engine, prompts, CASES[case], async_scheduling=False, **kw)
    async_eng, got = _run(make_engine, prompts, CASES[case], async_scheduling=True, **kw)
    assert not sync_eng.async_scheduling and async_eng.async_scheduling
    assert got == want
    assert all(t >= 0 for out in got for c in out for t in c[0])
    assert async_eng._pending is None or all(s.status.value == "finished" for s in async_eng._pending.sampled)
    if case == "logprobs":
        a = async_eng.generate(prompts[:1], CASES[case])[0].outputs[0].logprobs
        b = sync_eng.generate(prompts[:1], CASES[case])[0].outputs[0].logprobs
        assert [(x.token_id, round(x.logprob, 5)) for x in a] == [(x.token_id, round(x.logprob, 5)) for x in b]


def test_max_model_len_and_block_boundaries(make_engine, texts):
    eng0 = make_engine()
    prompt = eng0.tokenizer.encode(texts[3])
    p = SamplingParams(temperature=0.0, max_tokens=None, ignore_eos=True)
    _, want = _run(make_engine, [prompt], p, async_scheduling=False, max_model_len=len(prompt) + 37)
    _, got = _run(make_engine, [prompt], p, async_scheduling=True, max_model_len=len(prompt) + 37)
    assert got == want and len(got[0][0][0]) == 37 and got[0][0][2] == "length"


def test_abort_while_a_step_is_in_flight(make_engine, texts):
    eng = make_engine(async_scheduling=True)
    for i, t in enumerate(texts):
        eng.add_request(f"r{i}", eng.tokenizer.encode(t), SamplingParams(temperature=0.0, max_tokens=50,
                                                                         ignore_eos=True))
    for _ in range(4):
        eng.step()
    assert eng._pending is not None
    out = eng.abort("r1")
    assert out.finished and all(t >= 0 for t in out.outputs[0].token_ids)
    done = {}
    while eng.has_unfinished():
        for o in eng.step():
            if o.finished:
                done[o.request_id] = o
    assert set(done) == {"r0", "r2", "r3"} and all(len(o.outputs[0].token_ids) == 50 for o in done.values())


def test_resolve_placeholders():
    prev = torch.tensor([7, 8, 9])
    ids = torch.tensor([5, -1, -3, 0, -2])
    assert resolve_placeholders(ids, prev).tolist() == [5, 7, 9, 0, 8]
    assert resolve_placeholders(ids[:1], None).tolist() == [5]


def test_constrained_request_turns_the_engine_synchronous_and_back(make_engine, texts):
    """A grammar's mask needs the previous token on the host: while such a request runs, the async engine
    hands out its launched step (drain) and steps synchronously; outputs equal the sync engine's."""
    pytest.importorskip("llguidance")
    eng0 = make_engine()
    prompts = [eng0.tokenizer.encode(t) for t in texts[:2]]
    plain = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    grammar = SamplingParams(temperature=0.0, max_tokens=12, grammar='start: body\nbody: /[ab]+/\n')

    def run(async_on: bool):
        eng = make_engine(async_scheduling=async_on)
        eng.add_request("plain", prompts[0], plain)
        for _ in range(3):
            eng.step()                        # async: a step is in flight now
        eng.add_request("constrained", prompts[1], grammar)
        done = {}
        while eng.has_unfinished():
            for o in eng.step():
                if o.finished:
                    done[o.request_id] = (o.outputs[0].token_ids, o.outputs[0].text)
        return eng, done

    async_eng, got = run(True)
    _, want = run(False)
    assert got == want and set(got) == {"plain", "constrained"}
    assert set(got["constrained"][1]) <= {"a", "b"}
    assert async_eng._pending is None
