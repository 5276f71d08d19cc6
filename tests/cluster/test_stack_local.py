"""Three local replicas of the tiny model behind the real vllm-router (PyPI), and the real LiteLLM proxy
in front - real processes on 127.0.0.1, started by `invoke rollout` as a user would. What each replica
served is read from its own /metrics (vllm:request_success, vllm:prefix_cache_hits), not from the router.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import openai
import pytest

from cluster_helpers import ROOT, free_port, invoke, tiny_model

pytestmark = pytest.mark.slow
TOOLS = ROOT / ".venv-tools"
if not (TOOLS / "vllm-router/bin/vllm-router").exists() or not (TOOLS / "litellm/bin/litellm").exists():
    pytest.skip("vllm-router / litellm venvs missing: run ./dev (it makes .venv-tools/)", allow_module_level=True)


def metric(url: str, name: str) -> float:
    """Sum of every sample of `name` (counters may carry _total) in a replica's /metrics."""
    total = 0.0
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        head = line.split("{", 1)[0].split(" ", 1)[0]
        if head in (name, name + "_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("stack")
    e = {"MINI_VLLM_ROLLOUT_DIR": str(d / "rollout"), "MINI_VLLM_PORT": str(free_port()),
         "LITELLM_MASTER_KEY": "sk-gateway-test"}
    model = tiny_model(d / "tiny-gpt-oss")
    e["_model"] = str(model)
    yield e
    invoke("rollout", "--delete", env=e)


def up(env, *flags):
    r = invoke("rollout", "--model", env["_model"], "--replicas", "3", *flags, env=env, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:]
    st = json.loads(invoke("status", "--json", env=env).stdout)
    replicas = [e for e in st if e["role"] == "replica"]
    router = next(e for e in st if e["role"] == "router")
    assert len(replicas) == 3 and all(e["ready"] for e in replicas) and router["ready"], st
    return [e["url"] for e in replicas], router["url"], st


def test_consistent_hash_same_session_same_replica(env):
    replicas, router, st = up(env, "--router", "consistent_hash")
    assert all(e.get("in_router") for e in st if e["role"] == "replica")
    homes = {}
    with httpx.Client(base_url=router, timeout=60) as c:
        for s in range(8):
            before = [metric(u, "vllm:request_success") for u in replicas]
            for i in range(4):   # different prompts, one session key
                r = c.post("/v1/completions", headers={"X-Session-ID": f"session-{s}"},
                           json={"model": "tiny-gpt-oss", "prompt": f"turn {i} of conversation {s}", "max_tokens": 2})
                assert r.status_code == 200, r.text
            delta = [metric(u, "vllm:request_success") - b for u, b in zip(replicas, before)]
            assert sorted(delta) == [0, 0, 4], f"session-{s} spread over replicas: {delta}"
            homes[s] = delta.index(4)
    assert len(set(homes.values())) > 1, f"8 sessions all hashed to one replica: {homes}"


def test_cache_aware_shared_prefix_hits_one_replica(env):
    replicas, router, _ = up(env, "--router", "cache_aware")
    prefix = "You are a careful assistant. " + " ".join(f"rule {i}: answer plainly." for i in range(60))
    hits0 = [metric(u, "vllm:prefix_cache_hits") for u in replicas]
    done0 = [metric(u, "vllm:request_success") for u in replicas]
    with httpx.Client(base_url=router, timeout=60) as c:
        for i in range(20):
            r = c.post("/v1/completions", json={"model": "tiny-gpt-oss", "prompt": f"{prefix} Question {i}?",
                                                "max_tokens": 2})
            assert r.status_code == 200, r.text
    hits = [metric(u, "vllm:prefix_cache_hits") - h for u, h in zip(replicas, hits0)]
    served = [metric(u, "vllm:request_success") - d for u, d in zip(replicas, done0)]
    home = served.index(max(served))
    assert served[home] == 20, f"the 20 shared-prefix requests were spread: {served}"
    assert hits[home] > 0 and all(h == 0 for i, h in enumerate(hits) if i != home), hits


def test_failover_sigkill_under_load_then_reentry(env):
    replicas, router, st = up(env, "--router", "round_robin")
    victim = next(e for e in st if e["role"] == "replica" and e["url"] == replicas[1])
    results: list[tuple[float, float, object]] = []
    stop_at = time.monotonic() + 9
    killed = {}

    def client(n: int) -> None:
        with httpx.Client(base_url=router, timeout=30) as c:
            while time.monotonic() < stop_at:
                t0 = time.monotonic()
                body = {"model": "tiny-gpt-oss", "prompt": f"load {n} {t0}", "max_tokens": 48, "ignore_eos": True,
                        "stream": n % 2 == 0}
                try:
                    if body["stream"]:
                        with c.stream("POST", "/v1/completions", json=body) as r:
                            text = b"".join(r.iter_bytes())
                            out: object = r.status_code if b"data: [DONE]" in text else f"{r.status_code} cut"
                    else:
                        out = c.post("/v1/completions", json=body).status_code
                except httpx.HTTPError as exc:
                    out = type(exc).__name__
                results.append((t0, time.monotonic(), out))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(3)
    before = [metric(u, "vllm:request_success") for u in (replicas[0], replicas[2])]
    killed["t"] = time.monotonic()
    os.kill(victim["pid"], signal.SIGKILL)
    for t in threads:
        t.join()
    t_kill = killed["t"]
    failed = [(round(a - t_kill, 2), round(b - t_kill, 2), o) for a, b, o in results if o != 200]
    # Lost: only requests already running when the replica died (4 clients: at most 4), each ending
    # with an error soon after the kill, not a hang.
    assert all(a < 0 and b < 5 for a, b, _ in failed), failed
    assert len(failed) <= 4, failed
    late = [o for a, b, o in results if a > t_kill + 3]
    assert late and all(o == 200 for o in late), "requests 3 s after the kill still failed"
    after = [metric(u, "vllm:request_success") for u in (replicas[0], replicas[2])]
    assert all(a > b for a, b in zip(after, before)), (before, after)
    st = json.loads(invoke("status", "--json", env=env).stdout)
    assert [e["ready"] for e in st if e["url"] == replicas[1]] == [False]
    assert [e.get("in_router") for e in st if e["url"] == replicas[1]] == [False]
    # Restarted (same port, same router): the router's health check puts it back in rotation.
    replicas2, router2, _ = up(env, "--router", "round_robin")
    assert replicas2 == replicas and router2 == router
    served0 = metric(replicas[1], "vllm:request_success")
    deadline = time.monotonic() + 15
    with httpx.Client(base_url=router, timeout=30) as c:
        while metric(replicas[1], "vllm:request_success") == served0 and time.monotonic() < deadline:
            assert c.post("/v1/completions", json={"model": "tiny-gpt-oss", "prompt": "back?",
                                                   "max_tokens": 2}).status_code == 200
            time.sleep(0.2)
    assert metric(replicas[1], "vllm:request_success") > served0, "the restarted replica got no request"


def test_litellm_gateway_openai_client(env):
    _, router, _ = up(env, "--router", "round_robin", "--gateway", "litellm")
    st = json.loads(invoke("status", "--json", env=env).stdout)
    gw = next(e for e in st if e["role"] == "gateway")
    assert gw["ready"]
    via = openai.OpenAI(base_url=gw["url"] + "/v1", api_key=env["LITELLM_MASTER_KEY"], max_retries=0, timeout=60)
    direct = openai.OpenAI(base_url=router + "/v1", api_key="none", max_retries=0, timeout=60)
    with pytest.raises(openai.APIStatusError) as bad:   # not the master key (LiteLLM: 401, or 400 "No connected db")
        openai.OpenAI(base_url=gw["url"] + "/v1", api_key="sk-wrong", max_retries=0).models.list()
    assert bad.value.status_code in (400, 401)
    assert [m.id for m in via.models.list().data] == ["tiny-gpt-oss"]
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                               "parameters": {"type": "object", "properties": {
                                                   "city": {"type": "string"}}, "required": ["city"]}}}]
    # chat, reasoning effort, tools: the same request through the gateway and straight to the router
    # gives the same prompt (token count) and, at temperature 0, the same answer.
    for extra in ({}, {"reasoning_effort": "high"}, {"tools": tools, "tool_choice": "auto"}):
        a = via.chat.completions.create(model="tiny-gpt-oss", messages=msgs, max_tokens=12, temperature=0, **extra)
        b = direct.chat.completions.create(model="tiny-gpt-oss", messages=msgs, max_tokens=12, temperature=0, **extra)
        assert a.usage.prompt_tokens == b.usage.prompt_tokens, extra
        assert a.choices[0].message.content == b.choices[0].message.content, extra
        assert a.choices[0].finish_reason in ("stop", "length", "tool_calls")
    history = msgs + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'}]
    t = via.chat.completions.create(model="tiny-gpt-oss", messages=history, tools=tools, max_tokens=8)
    assert t.usage.prompt_tokens > a.usage.prompt_tokens
    chunks = list(via.chat.completions.create(model="tiny-gpt-oss", messages=msgs, max_tokens=12, temperature=0,
                                              stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == via.chat.completions.create(model="tiny-gpt-oss", messages=msgs, max_tokens=12,
                                               temperature=0).choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
