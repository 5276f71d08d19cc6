"""The whole engine (paged KV, batching, prefix cache, preemption, chunked prefill) against transformers'
greedy generate and logits, on the tiny checkpoint."""
from __future__ import annotations

import pytest
import torch
from gptoss_reference import GEN_TOKENS, hf_logits

from mini_vllm.engine.llm_engine import LLMEngine
from mini_vllm.engine_args import EngineArgs
from mini_vllm.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=GEN_TOKENS, ignore_eos=True)

VARIANTS = {
    "batched": dict(),
    "no_prefix_cache": dict(enable_prefix_caching=False),
    "chunked_prefill": dict(max_num_batched_tokens=24),
    # 12 blocks of 16 tokens for 4 sequences of up to 101 tokens: forces preemption by recompute
    "preemption": dict(kv_cache_memory_gb=12 * 2 * 2 * 16 * 2 * 64 * 4 / 1024 ** 3),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_matches_transformers(tiny_dir, prompts, hf_greedy, variant):
    eng = LLMEngine(EngineArgs(model=str(tiny_dir), **VARIANTS[variant]))
    outs = eng.generate(prompts, GREEDY)
    for out, ref in zip(outs, hf_greedy):
        assert out.outputs[0].token_ids == ref
        assert out.outputs[0].finish_reason == "length"
    if variant == "preemption":
        assert eng.scheduler.num_preemptions > 0
    assert eng.blocks.num_free == eng.blocks.num_blocks      # everything returned


def test_greedy_alone_and_with_a_cached_prefix(tiny_dir, prompts, hf_greedy):
    eng = LLMEngine(EngineArgs(model=str(tiny_dir)))
    for p, ref in zip(prompts, hf_greedy):                   # one request at a time
        assert eng.generate([p], GREEDY)[0].outputs[0].token_ids == ref
    again = eng.generate([prompts[3]], GREEDY)[0]             # same prompt: full blocks come from the cache
    assert again.num_cached_tokens == (len(prompts[3]) - 1) // 16 * 16 > 0
    assert again.outputs[0].token_ids == hf_greedy[3]
    assert eng.stats().prefix_cache_hits >= again.num_cached_tokens


def test_logprobs_are_the_reference_log_softmax(tiny_dir, prompts, hf_model):
    eng = LLMEngine(EngineArgs(model=str(tiny_dir)))
    p = prompts[1]
    out = eng.generate([p], SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=3))[0]
    co = out.outputs[0]
    ref = torch.log_softmax(hf_logits(hf_model, p + co.token_ids), dim=-1)
    assert len(co.logprobs) == 8
    for i, lp in enumerate(co.logprobs):
        row = ref[len(p) - 1 + i]
        assert lp.token_id == co.token_ids[i]
        assert abs(lp.logprob - row[lp.token_id].item()) < 1e-4
        top_v, top_i = row.topk(3)
        assert [t[0] for t in lp.top] == top_i.tolist()
        assert max(abs(a[2] - b) for a, b in zip(lp.top, top_v.tolist())) < 1e-4
        assert lp.top[0][0] == lp.token_id                    # greedy picks the best
