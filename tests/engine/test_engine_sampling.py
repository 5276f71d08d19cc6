"""Sampling semantics through the engine: seeds, n > 1, top-k/top-p/min-p, stop strings and ids, limits."""
from __future__ import annotations

import pytest

from mini_vllm.sampling_params import SamplingParams


def ids(eng, text: str) -> list[int]:
    return eng.tokenizer.encode(text)


def test_greedy_is_not_degenerate_and_deterministic(make_engine, texts):
    eng = make_engine()
    p = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
    a = eng.generate([ids(eng, t) for t in texts], p)
    b = eng.generate([ids(eng, t) for t in texts], p)
    for x, y in zip(a, b):
        assert x.outputs[0].token_ids == y.outputs[0].token_ids
        assert len(set(x.outputs[0].token_ids)) > 8                # random weights, but not one token repeated
    assert len({tuple(x.outputs[0].token_ids) for x in a}) == len(texts)


def test_seed_gives_the_same_sample_alone_or_in_a_batch(make_engine, texts):
    eng = make_engine()
    p = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=24, seed=7, ignore_eos=True)
    alone = eng.generate([ids(eng, texts[1])], p)[0].outputs[0].token_ids
    others = SamplingParams(temperature=1.0, max_tokens=30, ignore_eos=True)
    batched = eng.generate([ids(eng, t) for t in texts], [others, p, others, others])[1].outputs[0].token_ids
    assert alone == batched
    other_seed = eng.generate([ids(eng, texts[1])], SamplingParams(temperature=1.0, top_p=0.9, max_tokens=24,
                                                                   seed=8, ignore_eos=True))[0]
    assert other_seed.outputs[0].token_ids != alone


def test_n_samples_share_the_prompt_blocks(make_engine, texts):
    eng = make_engine()
    prompt = ids(eng, texts[3])
    assert len(prompt) > 32
    out = eng.generate([prompt], SamplingParams(n=3, temperature=1.0, max_tokens=16, seed=3, ignore_eos=True))[0]
    assert [o.index for o in out.outputs] == [0, 1, 2]
    assert all(len(o.token_ids) == 16 and o.finish_reason == "length" for o in out.outputs)
    assert len({tuple(o.token_ids) for o in out.outputs}) == 3
    assert eng.stats().prefix_cache_hits >= 2 * ((len(prompt) - 1) // 16 * 16)   # samples 1, 2 hit sample 0's blocks
    greedy = eng.generate([prompt], SamplingParams(n=2, temperature=0.0, max_tokens=16, ignore_eos=True))[0]
    assert greedy.outputs[0].token_ids == greedy.outputs[1].token_ids


@pytest.mark.parametrize("knob", [dict(top_k=1), dict(top_p=1e-6), dict(min_p=1.0)])
def test_truncation_to_one_token_equals_greedy(make_engine, texts, knob):
    eng = make_engine()
    prompt = ids(eng, texts[0])
    greedy = eng.generate([prompt], SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))[0]
    sampled = eng.generate([prompt], SamplingParams(temperature=1.5, max_tokens=12, ignore_eos=True, **knob))[0]
    assert sampled.outputs[0].token_ids == greedy.outputs[0].token_ids


def test_stop_strings_trim_and_stream_consistently(make_engine, texts):
    eng = make_engine()
    prompt = ids(eng, texts[2])
    full = eng.generate([prompt], SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True))[0].outputs[0]
    text = full.text
    stop = text[len(text) // 2: len(text) // 2 + 3]
    cut = text.find(stop)
    assert len(stop) == 3 and cut > 0
    for include in (False, True):
        eng.add_request("s", prompt, SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True, stop=[stop],
                                                    include_stop_str_in_output=include))
        streamed, last = "", None
        while eng.has_unfinished():
            for out in eng.step():
                streamed += out.outputs[0].text_delta
                last = out
        co = last.outputs[0]
        assert co.finish_reason == "stop" and co.stop_reason == stop
        assert co.text == (text[:cut + len(stop)] if include else text[:cut])
        assert streamed == co.text                                   # stop string never streamed half
        assert len(co.token_ids) < len(full.token_ids)


def test_stop_token_ids_eos_and_max_tokens(make_engine, texts):
    eng = make_engine()
    prompt = ids(eng, texts[1])
    full = eng.generate([prompt], SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True))[0].outputs[0]
    stop_id = full.token_ids[6]
    first = full.token_ids.index(stop_id)
    out = eng.generate([prompt], SamplingParams(temperature=0.0, max_tokens=20, stop_token_ids=[stop_id]))[0]
    assert out.outputs[0].token_ids == full.token_ids[:first + 1]
    assert (out.outputs[0].finish_reason, out.outputs[0].stop_reason) == ("stop", stop_id)
    eng.eos_ids = frozenset({stop_id})                               # as if the model emitted <|return|>
    eos = eng.generate([prompt], SamplingParams(temperature=0.0, max_tokens=20))[0].outputs[0]
    assert eos.token_ids == full.token_ids[:first + 1] and eos.finish_reason == "stop" and eos.stop_reason is None
    ignored = eng.generate([prompt], SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True))[0].outputs[0]
    assert ignored.token_ids == full.token_ids and ignored.finish_reason == "length"


def test_the_real_eos_ids_come_from_generation_config(make_engine):
    eng = make_engine()
    tok = eng.tokenizer
    names = {tok.id_to_token(i) for i in eng.eos_ids}
    assert {"<|return|>", "<|call|>"} <= names


def test_max_model_len_bounds_generation_and_prompts(make_engine):
    eng = make_engine(max_model_len=32)
    assert eng.model_config.max_model_len == 32
    out = eng.generate([list(range(1, 21))], SamplingParams(temperature=0.0, max_tokens=None, ignore_eos=True))[0]
    assert len(out.outputs[0].token_ids) == 12 and out.outputs[0].finish_reason == "length"
    with pytest.raises(ValueError, match="max_model_len"):
        eng.add_request("long", list(range(1, 33)), SamplingParams())
    with pytest.raises(ValueError, match="vocabulary"):
        eng.add_request("bad", [10 ** 6], SamplingParams())
    with pytest.raises(ValueError, match="temperature"):
        eng.add_request("t", [1, 2], SamplingParams(temperature=-1))
