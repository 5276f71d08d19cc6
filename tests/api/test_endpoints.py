"""Every endpoint through the official `openai` client and raw HTTP, against the real engine."""
from __future__ import annotations

import json

import pytest

from api_helpers import MAX_MODEL_LEN, MODEL, metric


def test_health_models_version(http):
    assert http.get("/health").status_code == 200
    assert http.get("/version").json()["version"]
    models = http.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == MODEL
    assert models["data"][0]["max_model_len"] == MAX_MODEL_LEN


def test_models_via_client(client):
    assert [m.id for m in client.models.list()] == [MODEL]


@pytest.mark.parametrize("prompt, n_prompts", [
    ("Hello world", 1), (["Hello", "See you tomorrow"], 2), ([1, 2, 3, 4], 1), ([[5, 6, 7], [8, 9]], 2)])
def test_completion_prompt_forms(client, prompt, n_prompts):
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=5, n=2, temperature=0.8, seed=1)
    assert sorted(c.index for c in r.choices) == list(range(2 * n_prompts))
    assert all(c.finish_reason in ("stop", "length") for c in r.choices)
    assert r.usage.completion_tokens <= 5 * 2 * n_prompts
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    if prompt == [1, 2, 3, 4]:
        assert r.usage.prompt_tokens == 4


def test_completion_ignore_eos_length_and_echo(client):
    r = client.completions.create(model=MODEL, prompt="Hello world", max_tokens=7, echo=True,
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 7
    assert r.choices[0].text.startswith("Hello world")


def test_completion_stream_shapes(client):
    chunks = list(client.completions.create(model=MODEL, prompt="Hello", max_tokens=6, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    body = chunks[:-1]
    assert body[-1].choices[0].finish_reason == "length"
    assert all(c.object == "text_completion" for c in chunks)
    assert len({c.id for c in chunks}) == 1


def test_raw_sse_ends_with_done(http):
    with http.stream("POST", "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 3,
                                                      "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)
    json.loads(events[0][6:])


def test_greedy_is_deterministic_and_stop_strings_cut(client):
    kw = dict(model=MODEL, prompt="The weather in", max_tokens=24, temperature=0, extra_body={"ignore_eos": True})
    a = client.completions.create(**kw).choices[0].text
    assert client.completions.create(**kw).choices[0].text == a
    stop = a[len(a) // 2: len(a) // 2 + 2]
    assert stop.strip(), f"output too short to pick a stop string: {a!r}"
    r = client.completions.create(**kw, stop=[stop])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == a[:a.index(stop)]


def test_completion_logprobs(client):
    r = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, logprobs=2,
                                  extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert all(v <= 0 for v in lp.token_logprobs)
    assert all(1 <= len(t) <= 3 for t in lp.top_logprobs)
    assert not any(t.startswith("\u0120") for t in lp.tokens)  # decoded text, not raw BPE pieces ("Ġx")


def test_chat_shapes(client):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "system", "content": "Be brief."},
                                                              {"role": "user", "content": "Hello"}],
                                       max_tokens=16, n=2, reasoning_effort="low", seed=3)
    assert [c.index for c in r.choices] == [0, 1]
    for c in r.choices:
        assert c.message.role == "assistant"
        assert c.finish_reason in ("stop", "length", "tool_calls")
        assert isinstance(c.message.content, str) or c.message.tool_calls
    assert r.usage.completion_tokens <= 32 and r.usage.prompt_tokens > 20


def test_chat_stream_shapes_with_tools_and_logprobs(client):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=tools, tool_choice="auto",
        max_completion_tokens=12, stream=True, stream_options={"include_usage": True}, logprobs=True,
        top_logprobs=2))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and 0 < chunks[-1].usage.completion_tokens <= 12
    finals = [c for c in chunks[:-1] if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_chat_with_tool_history(client):
    r = client.chat.completions.create(model=MODEL, max_tokens=8, messages=[
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"sunny": true}'}])
    assert r.choices[0].message.role == "assistant"


def test_metrics_names_and_counts(http, client):
    before = http.get("/metrics").text
    done = metric(before, "vllm:request_success_total", model_name=MODEL)
    client.completions.create(model=MODEL, prompt="Hello", max_tokens=3, extra_body={"ignore_eos": True})
    text = http.get("/metrics").text
    assert metric(text, "vllm:request_success_total", finished_reason="length") >= 1
    assert metric(text, "vllm:request_success_total") == done + 1
    assert metric(text, "vllm:generation_tokens_total", engine="0") >= 3
    assert metric(text, "vllm:prompt_tokens_total") > 0
    assert metric(text, "vllm:time_to_first_token_seconds_count") >= 1
    assert metric(text, "vllm:e2e_request_latency_seconds_count") >= 1
    assert metric(text, "vllm:inter_token_latency_seconds_count") >= 2
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "vllm:num_preemptions_total"):
        metric(text, name)
    # the older names the production stack reads carry the same numbers as today's
    for old, new in (("vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc"),
                     ("vllm:gpu_prefix_cache_queries_total", "vllm:prefix_cache_queries_total"),
                     ("vllm:gpu_prefix_cache_hits_total", "vllm:prefix_cache_hits_total"),
                     ("vllm:time_per_output_token_seconds_count", "vllm:inter_token_latency_seconds_count")):
        assert metric(text, old) == metric(text, new), old
    # every per-request histogram saw the finished request (3 generated tokens, prompt "Hello")
    for name in ("e2e_request_latency", "request_queue_time", "request_prefill_time", "request_decode_time",
                 "request_inference_time", "request_time_per_output_token"):
        assert metric(text, f"vllm:{name}_seconds_count") >= 1, name
    for name in ("request_prompt_tokens", "request_generation_tokens", "request_max_num_generation_tokens",
                 "request_params_max_tokens", "request_params_n"):
        assert metric(text, f"vllm:{name}_count") >= 1, name
    assert metric(text, "vllm:request_generation_tokens_bucket", le="2.0") < metric(
        text, "vllm:request_generation_tokens_bucket", le="5.0")               # the 3-token request
    assert metric(text, "vllm:iteration_tokens_total_count") >= 3              # one prefill + decode steps
    assert metric(text, "vllm:cache_config_info", block_size="16") == 1
    assert "# TYPE vllm:prompt_tokens_total counter" in text
    assert "# TYPE vllm:time_to_first_token_seconds histogram" in text
