"""Requests an attacker sends (issue 11): each gets a 400/413 naming the field, never a 500; open paths
are exact; a model that cannot load exits non-zero without ever listening. All through real HTTP."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import httpx
import pytest
from tokenizers import Tokenizer

from server_process import free_port, start_server

from api_helpers import MODEL

CHAT = [{"role": "user", "content": "hi"}]


def post(http: httpx.Client, path: str, body: dict) -> httpx.Response:
    # json.dumps escapes a lone surrogate as "\ud800" (httpx's own encoder cannot encode it at all)
    return http.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


def err(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return body


def tool(parameters: dict) -> list[dict]:
    return [{"type": "function", "function": {"name": "f", "parameters": parameters}}]


@pytest.mark.parametrize("path, body, param", [
    ("/v1/completions", {"prompt": "a\ud800b"}, "prompt"),
    ("/v1/completions", {"prompt": ["ok", "a\udfffb"]}, "prompt.1"),
    ("/v1/completions", {"prompt": "hi", "stop": ["\ud800"]}, "stop.0"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a\ud800b"}]}, "messages.0.content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "\udc00"}]}]},
     "messages.0.content.0.text"),
    ("/v1/chat/completions", {"messages": CHAT, "tools": tool({"type": "object", "properties": "x"})},
     "tools.0.function.parameters.properties"),
    ("/v1/chat/completions", {"messages": CHAT, "tools": tool({"type": "object", "properties": ["a"]})},
     "tools.0.function.parameters.properties"),
    ("/v1/chat/completions", {"messages": CHAT, "tools": tool(
        {"type": "object", "properties": {"a": {"type": "string"}}, "required": 5})},
     "tools.0.function.parameters.required"),
    ("/v1/chat/completions", {"messages": CHAT, "tools": tool(
        {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {}}, "required": [1]}}})},
     "tools.0.function.parameters.properties.a.required"),
    ("/v1/completions", {"prompt": "hi", "seed": 2 ** 64 * 10, "temperature": 1}, "seed"),
    ("/v1/completions", {"prompt": "hi", "seed": 2 ** 63}, "seed"),
    ("/v1/chat/completions", {"messages": CHAT, "seed": -2 ** 63 - 1}, "seed"),
    ("/v1/completions", {"prompt": "hi", "logit_bias": {"5": 101}}, "logit_bias"),
    ("/v1/completions", {"prompt": "hi", "logit_bias": {"5": 1, "999999999": 1}}, "logit_bias"),
])
def test_attack_requests_are_400_naming_the_field(http, path, body, param):
    e = err(post(http, path, dict(body, model=MODEL, max_tokens=2)), 400)
    assert e["param"] == param, e


def test_seed_at_the_64_bit_edge_samples(http):
    r = post(http, "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 2, "n": 3,
                                       "temperature": 1, "seed": 2 ** 63 - 1})
    assert r.status_code == 200, r.text


def _completion(http, **extra) -> dict:
    r = post(http, "/v1/completions", dict({"model": MODEL, "prompt": "The capital of", "max_tokens": 6,
                                            "ignore_eos": True}, **extra))
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def test_logit_bias_is_honoured(http, tiny_model):
    tok = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    plain = _completion(http, temperature=0)["text"]
    forced = next(i for i in range(300, 800) if (s := tok.decode([i])).isalpha() and s not in plain)
    word = tok.decode([forced])
    for temperature in (0, 1):      # greedy and random picks both see the bias
        assert _completion(http, temperature=temperature, logit_bias={str(forced): 100})["text"] == word * 6
    # banning every token the plain greedy answer used changes that answer
    banned = {str(t): -100 for t in tok.encode(plain, add_special_tokens=False).ids}
    assert _completion(http, temperature=0, logit_bias=banned)["text"] != plain


@pytest.fixture(scope="module")
def keyed(tiny_model, logs):
    """A server with an API key and the default body limit (so this file also runs against older code)."""
    srv = start_server(tiny_model, "--max-model-len", "256", "--kv-cache-memory-gb", "0.02", "--device", "cpu",
                       log_dir=logs, env={"MINI_VLLM_API_KEY": "k"})
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_max_request_bytes_flag():
    from mini_vllm.cli import parse_args
    assert parse_args(["serve", "m"]).max_request_bytes == 8 * 1024 * 1024
    assert parse_args(["serve", "m", "--max-request-bytes", "4096"]).max_request_bytes == 4096


def test_body_over_the_limit_is_413_before_it_is_read(keyed):
    port = int(keyed.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:   # declares 16 MB, sends 1 KB
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer k\r\n"
                  b"content-type: application/json\r\ncontent-length: 16777216\r\n\r\n" + b" " * 1024)
        head = s.recv(65536).decode()
        while "\r\n\r\n" in head and not head.rstrip().endswith("}"):   # the body may come in a later segment
            more = s.recv(65536).decode()
            if not more:
                break
            head += more
    assert head.startswith("HTTP/1.1 413"), head
    assert json.loads(head.split("\r\n\r\n", 1)[1])["error"]["param"] == "body"

    def chunks():                    # no Content-Length: counted as it streams (9 MiB > the 8 MiB default)
        for _ in range(9 * 16):
            yield b" " * 65536
    r = httpx.post(keyed.url + "/v1/completions", content=chunks(), timeout=30,
                   headers={"authorization": "Bearer k", "content-type": "application/json"})
    assert err(r, 413)["code"] == "request_too_large"
    ok = httpx.post(keyed.url + "/v1/completions", headers={"authorization": "Bearer k"}, timeout=30,
                    json={"model": MODEL, "prompt": "hi", "max_tokens": 1})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("path", ["/healthz", "/health/", "/metricsx", "/version.json", "/pingpong"])
def test_open_paths_are_exact(keyed, path):
    r = httpx.get(keyed.url + path)
    assert r.status_code == 401, (path, r.status_code, r.text)
    assert httpx.get(keyed.url + "/health").status_code == 200


def test_a_model_that_cannot_load_exits_without_listening(tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mini_vllm.cli", "serve", str(broken), "--host", "127.0.0.1",
                             "--port", str(port), "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    listened = False
    deadline = time.monotonic() + 60
    try:
        while proc.poll() is None and time.monotonic() < deadline:   # never accepts a connection while alive
            with socket.socket() as s:
                listened |= s.connect_ex(("127.0.0.1", port)) == 0
            time.sleep(0.05)
    finally:
        if proc.poll() is None:                         # still running after 60 s: a failed start not seen
            proc.kill()
    out, errs = proc.communicate()
    text = (out + errs).decode()
    assert proc.returncode == 1 and not listened
    assert "Traceback" not in text
    failed = [line for line in text.splitlines() if "model failed to load" in line]
    assert len(failed) == 1 and str(broken) in failed[0], text
