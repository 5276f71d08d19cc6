"""A request that fails inside the engine gets an error; concurrent requests and the server carry on.

The session server runs with the test-only --test-fault-prompt hook (see conftest): the
engine raises while accepting the 3rd token of any sequence whose prompt starts with FAULT_MARKER.
"""
from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from api_helpers import FAULT_MARKER, MODEL, metric

BAD = list(FAULT_MARKER) + [40, 41, 42]


async def _good(c: openai.AsyncOpenAI, i: int) -> str:
    if i % 2:
        r = await c.completions.create(model=MODEL, prompt=f"Hello {i}", max_tokens=24, extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 24
        return r.choices[0].finish_reason
    text, reason = "", None
    stream = await c.completions.create(model=MODEL, prompt=[40 + i, 41, 42], max_tokens=24, stream=True,
                                        extra_body={"ignore_eos": True})
    async for chunk in stream:
        text += chunk.choices[0].text
        reason = chunk.choices[0].finish_reason or reason
    return reason


async def _bad_non_stream(c: openai.AsyncOpenAI) -> str:
    with pytest.raises(openai.InternalServerError, match="injected test fault") as e:
        await c.completions.create(model=MODEL, prompt=BAD, max_tokens=24, extra_body={"ignore_eos": True})
    return e.value.body["type"] if isinstance(e.value.body, dict) else str(e.value.body)


async def _bad_stream(url: str) -> list[dict]:
    """Raw SSE: the stream starts normally (the fault hits the 3rd token), then one error event, then [DONE]."""
    body = {"model": MODEL, "prompt": BAD, "max_tokens": 24, "stream": True, "ignore_eos": True}
    events = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as h, h.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line:
                events.append(line)
    assert events[-1] == "data: [DONE]"
    return [json.loads(e[6:]) for e in events[:-1]]


def test_engine_failure_fails_one_request_only(server, http):
    async def run():
        c = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)
        try:
            return await asyncio.gather(_bad_non_stream(c), _bad_stream(server.url),
                                        *(_good(c, i) for i in range(8)))
        finally:
            await c.close()

    bad_type, bad_events, *good = asyncio.run(run())
    assert bad_type == "InternalServerError"
    assert good == ["length"] * 8
    *chunks, last = bad_events
    assert chunks and all("error" not in ch and ch["choices"][0]["finish_reason"] is None for ch in chunks)
    assert last["error"]["code"] == 500 and "injected test fault" in last["error"]["message"]
    # the server keeps serving, and the failed requests' KV blocks were freed
    assert http.get("/health").status_code == 200
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                                "max_tokens": 4})
    assert r.status_code == 200, r.text
    text = http.get("/metrics").text
    assert metric(text, "vllm:num_requests_running") == 0 and metric(text, "vllm:kv_cache_usage_perc") == 0
    assert metric(text, "vllm:request_success_total", finished_reason="error") >= 2
