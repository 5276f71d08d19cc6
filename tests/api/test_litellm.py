"""LiteLLM (PyPI, in its own venv as ./dev installs it) talking to a live server as `hosted_vllm/<model>`.

LiteLLM's SDK runs in .venv-tools/litellm (its pinned dependencies stay out of the project venv); the
answers it returns must equal the server's own for the same seeded requests: plain chat, streaming,
a JSON-schema answer with its reasoning, a forced tool call, and a text completion.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from api_helpers import MODEL

ROOT = Path(__file__).resolve().parents[2]
TOOLS = Path(os.environ.get("MINI_VLLM_TOOLS_DIR") or ROOT / ".venv-tools")
PYTHON = TOOLS / "litellm" / "bin" / "python"
if not PYTHON.exists():
    pytest.skip("the litellm venv is missing: run ./dev (it makes .venv-tools/)", allow_module_level=True)


@pytest.fixture(scope="module")
def through_litellm(server) -> dict:
    proc = subprocess.run([str(PYTHON), str(Path(__file__).with_name("litellm_probe.py")), server.url, MODEL],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _direct(client, seed: int, **kw):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Where?"}],
                                          temperature=1.0, seed=seed, **kw).choices[0]


def test_chat_and_stream_match_the_server(through_litellm, client):
    direct = _direct(client, 0, max_tokens=8)
    assert through_litellm["chat"] == {"content": direct.message.content, "completion_tokens": 8}
    assert "".join(through_litellm["stream"]) == direct.message.content
    text = client.completions.create(model=MODEL, prompt="Hello", max_tokens=5, temperature=1.0, seed=0)
    assert through_litellm["text"] == text.choices[0].text


def test_structured_answer_and_reasoning_pass_through(through_litellm, client):
    schema = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"],
              "additionalProperties": False}
    rf = {"type": "json_schema", "json_schema": {"name": "where", "schema": schema}}
    for seed, got in enumerate(through_litellm["json"]):
        want = _direct(client, seed, max_tokens=60, response_format=rf)
        assert (got["finish"], got["content"] or "") == (want.finish_reason, want.message.content or "")
        assert (got["reasoning"] or None) == (want.message.model_extra.get("reasoning") or None)
        if got["finish"] == "stop":
            assert json.loads(got["content"])["city"] in ("Paris", "Rome")
    assert any(g["finish"] == "stop" for g in through_litellm["json"])
    assert any(g["reasoning"] for g in through_litellm["json"])


def test_forced_tool_call_passes_through(through_litellm):
    calls = [g for g in through_litellm["tools"] if g["finish"] == "tool_calls"]
    assert calls, through_litellm["tools"]
    for g in calls:
        [call] = g["calls"]
        assert call["name"] == "get_city" and json.loads(call["arguments"])["city"] in ("Paris", "Rome")
