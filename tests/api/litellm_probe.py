"""Run by the LiteLLM venv's python (not pytest): LiteLLM's SDK against a server as `hosted_vllm/<model>`.

    python litellm_probe.py BASE_URL MODEL  -> one JSON object on stdout with what LiteLLM returned

Every request is seeded, so the test can ask the server directly for the same answers and compare.
"""
from __future__ import annotations

import json
import sys

import litellm

SCHEMA = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"],
          "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_city", "parameters": SCHEMA}}]
SEEDS = range(6)


def main() -> None:
    base, name = sys.argv[1], sys.argv[2]
    kw = {"model": f"hosted_vllm/{name}", "api_base": base + "/v1", "api_key": "none", "temperature": 1.0}
    msgs = [{"role": "user", "content": "Where?"}]
    out: dict = {}
    r = litellm.completion(messages=msgs, max_tokens=8, seed=0, **kw)
    out["chat"] = {"content": r.choices[0].message.content, "completion_tokens": r.usage.completion_tokens}
    chunks = litellm.completion(messages=msgs, max_tokens=8, seed=0, stream=True, **kw)
    out["stream"] = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    rf = {"type": "json_schema", "json_schema": {"name": "where", "schema": SCHEMA}}
    out["json"] = []
    for seed in SEEDS:
        m = litellm.completion(messages=msgs, max_tokens=60, seed=seed, response_format=rf, **kw).choices[0]
        out["json"].append({"finish": m.finish_reason, "content": m.message.content,
                            "reasoning": getattr(m.message, "reasoning_content", None)})
    out["tools"] = []
    for seed in SEEDS:
        m = litellm.completion(messages=msgs, max_tokens=150, seed=seed, tools=TOOLS, tool_choice="required",
                               **kw).choices[0]
        calls = [{"name": c.function.name, "arguments": c.function.arguments} for c in m.message.tool_calls or []]
        out["tools"].append({"finish": m.finish_reason, "calls": calls})
    t = litellm.text_completion(prompt="Hello", max_tokens=5, seed=0, **kw)
    out["text"] = t.choices[0].text
    print(json.dumps(out))


if __name__ == "__main__":
    main()
