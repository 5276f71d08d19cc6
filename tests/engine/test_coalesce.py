"""Stream coalescing: merged RequestOutputs carry exactly what the separate ones did, and a slow
consumer of AsyncEngine.generate receives several tokens per output (one per step when coalescing is off)."""
from __future__ import annotations

import asyncio
import copy

import pytest

from mini_vllm.engine.async_engine import AsyncEngine, EngineDeadError, _drain
from mini_vllm.engine.coalesce import merge_outputs
from mini_vllm.engine.llm_engine import LLMEngine
from mini_vllm.engine.outputs import CompletionOutput, RequestOutput, TokenLogprob
from mini_vllm.engine_args import EngineArgs
from mini_vllm.sampling_params import SamplingParams


def _stream_of(eng: LLMEngine, rid: str, ids: list[int], params: SamplingParams) -> list[RequestOutput]:
    """All outputs of one request, each deep-copied when produced (as if consumed at that moment)."""
    eng.add_request(rid, ids, params)
    outs = []
    while eng.has_unfinished():
        outs += [copy.deepcopy(o) for o in eng.step() if o.request_id == rid]
    return outs


def _groups(items: list, sizes: list[int]) -> list[list]:
    out, i, k = [], 0, 0
    while i < len(items):
        n = sizes[k % len(sizes)]
        out.append(items[i:i + n])
        i, k = i + n, k + 1
    return out


def test_merge_is_exact_on_real_engine_outputs(make_engine, texts):
    eng = make_engine()
    params = SamplingParams(n=2, temperature=0.9, seed=3, max_tokens=20, logprobs=2, stop=["e"])
    outs = _stream_of(eng, "r", eng.tokenizer.encode(texts[1]), params)
    assert len(outs) > 4
    before = copy.deepcopy(outs)
    merged = [merge_outputs(g) for g in _groups(outs, [3, 1, 4, 2])]
    assert outs == before                                     # inputs untouched
    final = outs[-1]
    assert merged[-1].finished and not any(m.finished for m in merged[:-1])
    for k in range(2):
        sample = [co for m in merged for co in m.outputs if co.index == k]
        want = next(co for co in final.outputs if co.index == k)
        assert "".join(co.text_delta for co in sample) == want.text
        assert [t for co in sample for t in co.token_ids_delta] == want.token_ids
        lps = [lp for co in sample for lp in co.logprobs_delta or []]
        assert [lp.token_id for lp in lps] == want.token_ids   # logprobs aligned with their tokens
        assert lps == want.logprobs
        assert sample[-1].finish_reason == want.finish_reason is not None
        assert sample[-1].stop_reason == want.stop_reason
    halves = merge_outputs([merge_outputs(outs[:2]), merge_outputs(outs[2:])])
    assert merge_outputs(outs) == halves                      # grouping does not matter


def _co(index: int, text: str, ids: list[int], finish: str | None = None, lp: bool = False) -> CompletionOutput:
    lps = [TokenLogprob(i, str(i), -0.5) for i in ids] if lp else None
    return CompletionOutput(index, text_delta=text, token_ids_delta=ids, logprobs_delta=lps, finish_reason=finish)


def test_merge_keeps_samples_missing_from_the_newest_and_newest_fields():
    a = RequestOutput("x", [1], [_co(0, "a", [5]), _co(1, "b", [6])], metrics={"arrival": 1.0})
    b = RequestOutput("x", [1], [_co(1, "c", [7], "stop")], num_cached_tokens=4, metrics={"arrival": 1.0, "first_token": 2.0})
    m = merge_outputs([a, b])
    assert [(co.index, co.text_delta, co.token_ids_delta, co.finish_reason) for co in m.outputs] == [
        (0, "a", [5], None), (1, "bc", [6, 7], "stop")]
    assert m.num_cached_tokens == 4 and m.metrics == {"arrival": 1.0, "first_token": 2.0}
    assert merge_outputs([a]) is a
    mixed = merge_outputs([RequestOutput("x", [1], [_co(0, "a", [5], lp=True)]), RequestOutput("x", [1], [_co(0, "b", [6])])])
    assert [lp.token_id for lp in mixed.outputs[0].logprobs_delta] == [5]
    with pytest.raises(ValueError, match="different requests"):
        merge_outputs([a, RequestOutput("y", [1], [])])
    with pytest.raises(ValueError):
        merge_outputs([])


def test_drain_stops_at_an_error_and_delivers_the_tokens_before_it():
    async def main():
        q: asyncio.Queue = asyncio.Queue()
        first = RequestOutput("x", [1], [_co(0, "a", [1])])
        for item in (RequestOutput("x", [1], [_co(0, "b", [2])]), EngineDeadError("gone"),
                     RequestOutput("x", [1], [_co(0, "c", [3])])):
            q.put_nowait(item)
        merged, err = _drain(first, q)
        return merged, err, q.qsize()
    merged, err, left = asyncio.run(main())
    assert merged.outputs[0].text_delta == "ab" and isinstance(err, EngineDeadError) and left == 1


@pytest.mark.parametrize("coalesce", [True, False])
def test_slow_consumer_gets_merged_outputs_only_when_coalescing(tiny_dir, texts, coalesce):
    eng = AsyncEngine.from_args(EngineArgs(model=str(tiny_dir)))
    eng.coalesce = coalesce
    ref = LLMEngine(EngineArgs(model=str(tiny_dir)))
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=1)
    ids = eng.tokenizer.encode(texts[0])

    async def main():
        got = []
        async for out in eng.generate("slow", ids, params):
            got.append(out)
            await asyncio.sleep(0.05)                 # a consumer slower than the engine's steps
        return got

    eng.start()
    try:
        got = asyncio.run(main())
    finally:
        eng.shutdown()
    sizes = [len(o.outputs[0].token_ids_delta) for o in got]
    final = got[-1].outputs[0]
    assert got[-1].finished and final.finish_reason == "length"
    assert "".join(o.outputs[0].text_delta for o in got) == final.text
    assert [t for o in got for t in o.outputs[0].token_ids_delta] == final.token_ids
    assert final.token_ids == ref.generate([ids], SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
                                           )[0].outputs[0].token_ids
    assert [lp.token_id for o in got for lp in o.outputs[0].logprobs_delta] == final.token_ids
    if coalesce:
        assert max(sizes) > 1 and len(got) < 24
    else:
        assert sizes == [1] * 24


class _HookedEngine(LLMEngine):
    """An engine offering gpu_wait_hook, called where a CUDA step would be waiting on the device."""

    gpu_wait_hook = None

    def step(self):
        if self.gpu_wait_hook is not None:
            self.gpu_wait_hook()
        return super().step()


@pytest.mark.parametrize("defer", ["1", "0"])
def test_outputs_handed_over_in_the_gpu_wait_hook_stay_exact_and_ordered(tiny_dir, texts, monkeypatch, defer):
    inner = _HookedEngine(EngineArgs(model=str(tiny_dir), deliver_in_gpu_wait=defer == "1"))
    eng = AsyncEngine(inner)
    assert (inner.gpu_wait_hook is not None) == (defer == "1")
    delivered: list[bool] = []              # per hand-over: was it made from inside the hook?
    in_hook = [False]
    real_deliver, real_hook = eng._deliver, inner.gpu_wait_hook

    def spy(outs):
        delivered.append(in_hook[0])
        real_deliver(outs)

    def hook():
        in_hook[0] = True
        try:
            real_hook()
        finally:
            in_hook[0] = False
    if real_hook is not None:
        inner.gpu_wait_hook = hook
    eng._deliver = spy
    ref = LLMEngine(EngineArgs(model=str(tiny_dir)))
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)

    async def one(i: int, text: str):
        ids = eng.tokenizer.encode(text)
        return ids, [out async for out in eng.generate(f"h{i}", ids, params)]

    async def main():
        return await asyncio.gather(*[one(i, t) for i, t in enumerate(texts)])

    eng.start()
    try:
        results = asyncio.run(main())
    finally:
        eng.shutdown()
    for ids, outs in results:
        final = outs[-1].outputs[0]
        assert outs[-1].finished and sum(o.finished for o in outs) == 1
        assert [t for o in outs for t in o.outputs[0].token_ids_delta] == final.token_ids
        assert final.token_ids == ref.generate([ids], params)[0].outputs[0].token_ids
        assert "".join(o.outputs[0].text_delta for o in outs) == final.text
    if defer == "1":
        assert any(delivered) and not all(delivered)   # most from inside the next step; the last at once
    else:
        assert not any(delivered)
