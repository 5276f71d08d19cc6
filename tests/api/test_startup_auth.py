"""A second server: the port opens only once the model is loaded, API keys, and 429 when the queue is full."""
from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from server_process import start_server

from api_helpers import MODEL

KEY = "s3cret-test-key"


@pytest.fixture(scope="module")
def keyed(tiny_model, logs):
    srv = start_server(tiny_model, "--max-model-len", "512", "--kv-cache-memory-gb", "0.05", "--max-num-seqs", "1",
                       "--max-waiting", "1", "--device", "cpu", log_dir=logs, env={"MINI_VLLM_API_KEY": KEY})
    try:
        # load first, listen after: the first answer the port gives is already "ready"
        first = srv.first_status()
        srv.wait_ready()
        yield srv, first
    finally:
        srv.stop()


def test_the_first_answer_is_ready(keyed):
    srv, first = keyed
    assert first == 200
    assert httpx.get(srv.url + "/health").status_code == 200


def test_api_key(keyed):
    srv, _ = keyed
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.get(srv.url + "/v1/models", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(srv.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert httpx.get(srv.url + "/metrics").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=srv.url + "/v1", api_key="nope", max_retries=0).models.list()
    assert KEY not in srv.log()


def test_queue_full_is_429_and_others_finish(keyed):
    srv, _ = keyed

    async def run():
        c = openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
        async def one(stream: bool):
            try:
                r = await c.completions.create(model=MODEL, prompt="Hello", max_tokens=60, stream=stream,
                                               extra_body={"ignore_eos": True})
                if stream:  # a refused stream is a 429 status too, not an error event inside a 200
                    return [ch.choices[0].finish_reason async for ch in r][-1]
                return r.choices[0].finish_reason
            except openai.RateLimitError:
                return 429
        try:
            return await asyncio.gather(*(one(i % 2 == 1) for i in range(12)))
        finally:
            await c.close()
    results = asyncio.run(run())
    assert 429 in results[0::2] and 429 in results[1::2] and "length" in results
    assert set(results) == {429, "length"}
