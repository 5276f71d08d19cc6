"""OpenAI-shaped errors, disconnects, concurrency: one bad request never hurts the others."""
from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from api_helpers import MAX_MODEL_LEN, MODEL, metric


def err(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return body


def test_malformed_json_is_400(http):
    r = http.post("/v1/completions", content=b'{"model": "x", "prompt": ', headers={"content-type": "application/json"})
    assert "JSON" in err(r, 400)["message"]


@pytest.mark.parametrize("body, param", [
    ({"model": MODEL, "prompt": "hi", "temperature": -1}, "temperature"),
    ({"model": MODEL, "prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ({"model": MODEL, "prompt": "hi", "logprobs": 50}, "logprobs"),
    ({"model": MODEL}, "prompt"),
    ({"model": MODEL, "prompt": []}, "prompt"),
    ({"model": MODEL, "prompt": [10 ** 9]}, "prompt"),
])
def test_bad_completion_fields_are_400_naming_the_field(http, body, param):
    assert err(http.post("/v1/completions", json=body), 400)["param"] == param


@pytest.mark.parametrize("body, param", [
    ({"model": MODEL, "messages": []}, "messages"),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}, "tool_choice"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "reasoning_effort": "max"}, "reasoning_effort"),
    ({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
])
def test_bad_chat_fields_are_400(http, body, param):
    assert err(http.post("/v1/chat/completions", json=body), 400)["param"] == param


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-5", prompt="hi", max_tokens=2)


def test_prompt_longer_than_model_is_400(client):
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.completions.create(model=MODEL, prompt=[7] * (MAX_MODEL_LEN + 5), max_tokens=2)


def _wait_idle(http, timeout=5.0) -> float:
    deadline = time.monotonic() + timeout
    while True:
        text = http.get("/metrics").text
        running, usage = metric(text, "vllm:num_requests_running"), metric(text, "vllm:kv_cache_usage_perc")
        if (running == 0 and usage == 0) or time.monotonic() > deadline:
            return running + usage
        time.sleep(0.05)


def test_stream_disconnect_frees_kv(server, http):
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 450, "n": 8, "stream": True, "ignore_eos": True}
    with httpx.Client(base_url=server.url, timeout=30) as c, c.stream("POST", "/v1/completions", json=body) as r:
        lines = r.iter_lines()
        for _ in range(3):
            next(lines)
        assert metric(http.get("/metrics").text, "vllm:num_requests_running") >= 1
    assert _wait_idle(http) == 0


def test_non_stream_disconnect_frees_kv(server, http):
    # 16 samples x 450 tokens: seconds of work, so the client's 0.5 s read timeout hits mid-generation
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 450, "n": 16, "ignore_eos": True}
    aborted = metric(http.get("/metrics").text, "vllm:request_success_total", finished_reason="abort")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json=body, timeout=httpx.Timeout(30, read=0.5))
    assert _wait_idle(http) == 0
    assert metric(http.get("/metrics").text, "vllm:request_success_total", finished_reason="abort") == aborted + 1


def test_hundred_concurrent_requests(server):
    async def run():
        c = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)
        async def one(i):
            if i % 2:
                r = await c.completions.create(model=MODEL, prompt=f"Hello {i}", max_tokens=8, seed=i)
                return r.choices[0].finish_reason
            r = await c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"Hi {i}"}],
                                                max_tokens=8, seed=i)
            return r.choices[0].finish_reason
        try:
            return await asyncio.gather(*(one(i) for i in range(100)))
        finally:
            await c.close()
    reasons = asyncio.run(run())
    assert len(reasons) == 100 and all(r in ("stop", "length", "tool_calls") for r in reasons)
