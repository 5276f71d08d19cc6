"""Requests coming and going: abort frees blocks, one failing request spares the others, the async contract."""
from __future__ import annotations

import asyncio

import pytest

from mini_vllm.engine.async_engine import AsyncEngine, QueueFullError
from mini_vllm.engine.llm_engine import LLMEngine
from mini_vllm.engine_args import EngineArgs
from mini_vllm.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)


def test_abort_frees_blocks_at_once(make_engine, texts):
    eng = make_engine()
    for i, t in enumerate(texts):
        eng.add_request(f"r{i}", eng.tokenizer.encode(t), GREEDY)
    for _ in range(3):
        eng.step()
    used = eng.blocks.num_blocks - eng.blocks.num_free
    assert used > 0
    final = eng.abort("r3")
    assert final.finished and final.outputs[0].finish_reason == "abort" and len(final.outputs[0].token_ids) == 3
    assert eng.blocks.num_blocks - eng.blocks.num_free < used
    for rid in ("r0", "r1", "r2"):
        eng.abort(rid)
    assert eng.blocks.num_free == eng.blocks.num_blocks and not eng.has_unfinished()
    assert eng.abort("r0") is None


def test_one_failing_request_does_not_disturb_the_others(make_engine, texts):
    prompts = [make_engine().tokenizer.encode(t) for t in texts]
    clean = make_engine().generate(prompts, GREEDY)
    eng = make_engine()

    def hook(seq):
        if seq.req.request_id.endswith("-1") and seq.num_output_tokens == 5:
            raise RuntimeError("injected fault")

    eng.fault_hook = hook
    outs = eng.generate(prompts, GREEDY)
    bad = outs[1].outputs[0]
    assert bad.finish_reason == "error" and "injected fault" in bad.error and len(bad.token_ids) == 5
    for i in (0, 2, 3):
        assert outs[i].outputs[0].token_ids == clean[i].outputs[0].token_ids
    assert eng.blocks.num_free == eng.blocks.num_blocks
    eng.fault_hook = None
    assert eng.generate([prompts[1]], GREEDY)[0].outputs[0].token_ids == clean[1].outputs[0].token_ids


def run_async(engine: AsyncEngine, coro):
    engine.start()
    try:
        return asyncio.run(coro)
    finally:
        engine.shutdown()


def test_async_engine_streams_deltas_and_counts(tiny_dir, texts):
    eng = AsyncEngine.from_args(EngineArgs(model=str(tiny_dir)))
    ref = LLMEngine(EngineArgs(model=str(tiny_dir)))
    assert eng.tokenizer.token_to_id("<|return|>") in eng.tokenizer.eos_token_ids
    assert eng.model_config.max_model_len == 4096 and eng.model_config.served_model_name == "tiny-gpt-oss"

    async def one(i: int, text: str):
        ids = eng.tokenizer.encode(text)
        deltas, tokens, outs = "", [], []
        async for out in eng.generate(f"a{i}", ids, GREEDY):
            deltas += out.outputs[0].text_delta
            tokens += out.outputs[0].token_ids_delta
            outs.append(out)
        return ids, deltas, tokens, outs

    async def main():
        return await asyncio.gather(*[one(i, t) for i, t in enumerate(texts)])

    results = run_async(eng, main())
    for ids, deltas, tokens, outs in results:
        final = outs[-1]
        assert final.finished and all(not o.finished for o in outs[:-1])
        assert deltas == final.outputs[0].text and tokens == final.outputs[0].token_ids
        assert tokens == ref.generate([ids], GREEDY)[0].outputs[0].token_ids
        assert {"arrival", "first_token", "finished"} <= set(final.metrics)
    st = eng.stats()
    assert st.generation_tokens_total == 24 * len(texts) and st.prompt_tokens_total == sum(len(r[0]) for r in results)
    assert st.num_requests_running == 0 and st.kv_cache_usage == 0.0


def test_async_abort_on_consumer_exit_and_refusals(tiny_dir, texts):
    eng = AsyncEngine.from_args(EngineArgs(model=str(tiny_dir), max_waiting=0, max_model_len=64))

    async def main():
        ids = eng.tokenizer.encode(texts[0])
        with pytest.raises(ValueError, match="max_model_len"):
            async for _ in eng.generate("long", list(range(1, 65)), GREEDY):
                pass
        with pytest.raises(QueueFullError):
            async for _ in eng.generate("q", ids, GREEDY):
                pass
        eng.args.max_waiting = 8
        gen = eng.generate("cut", ids, SamplingParams(temperature=0.0, max_tokens=10_000, ignore_eos=True))
        async for out in gen:
            if len(out.outputs[0].token_ids) >= 3:
                break
        await gen.aclose()                          # client went away: abort
        for _ in range(200):
            if eng.stats().kv_cache_usage == 0.0 and eng.stats().num_requests_running == 0:
                break
            await asyncio.sleep(0.01)
        assert eng.stats().kv_cache_usage == 0.0
        n = 0
        async for out in eng.generate("after", ids, GREEDY):     # still serving
            n = len(out.outputs[0].token_ids)
        return n

    assert run_async(eng, main()) == 24
    assert not eng.is_ready
