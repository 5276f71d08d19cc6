"""Tensor parallelism over gloo: two processes, token-identical to one, workers gone after shutdown."""
from __future__ import annotations

import asyncio

from mini_vllm.engine.async_engine import AsyncEngine
from mini_vllm.engine.llm_engine import LLMEngine
from mini_vllm.engine_args import EngineArgs
from mini_vllm.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)


def test_tp2_gloo_matches_tp1(tiny_dir, texts):
    ref = LLMEngine(EngineArgs(model=str(tiny_dir)))
    prompts = [ref.tokenizer.encode(t) for t in texts]
    expected = [o.outputs[0].token_ids for o in ref.generate(prompts, GREEDY)]
    sampled = ref.generate(prompts[:1], SamplingParams(temperature=1.0, seed=5, max_tokens=16))[0].outputs[0].token_ids

    eng = AsyncEngine.from_args(EngineArgs(model=str(tiny_dir), tensor_parallel_size=2))
    group = eng._owner
    assert eng.engine.runner.model.n_experts == 4 and eng.engine.runner.model.n_heads == 2
    eng.start()

    async def one(i: int, ids: list[int], params: SamplingParams) -> list[int]:
        toks: list[int] = []
        async for out in eng.generate(f"tp{i}", ids, params):
            toks = out.outputs[0].token_ids
        return toks

    async def main():
        greedy = await asyncio.gather(*[one(i, p, GREEDY) for i, p in enumerate(prompts)])
        seeded = await one(99, prompts[0], SamplingParams(temperature=1.0, seed=5, max_tokens=16))
        return greedy, seeded

    try:
        greedy, seeded = asyncio.run(main())
    finally:
        eng.shutdown()
    assert greedy == expected
    assert seeded == sampled
    assert all(not p.is_alive() for p in group.procs)
