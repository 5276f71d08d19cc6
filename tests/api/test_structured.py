"""Constrained decoding, tool_choice, `reasoning`, and chat logprobs - through the official openai client.

The tiny model's weights are random, so its answers are arbitrary: the tests check properties that
must hold for every answer (each one that finishes satisfies the schema / regex / choice, each forced
tool call names a listed tool and carries arguments valid for it) over several seeds, and that some
answers do finish. A seed's answer is not the same on every run (CI once got an answer cut off part
way into its JSON where this box's run was still reasoning: float rounding differs with the CPU and the
batch, and at temperature 1 a near tie can flip), so no test here rests on one seed's particular answer.
"""
from __future__ import annotations

import json
import re

import jsonschema
import llguidance
import openai
import pytest

from mini_vllm.model.tokenizer import Tokenizer
from mini_vllm.structured.matcher import ll_tokenizer

from api_helpers import MODEL

SCHEMA = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]},
                                          "n": {"type": "integer", "minimum": 0, "maximum": 99},
                                          "ok": {"type": "boolean"}},
          "required": ["city", "n", "ok"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": SCHEMA}},
         {"type": "function", "function": {"name": "get_time", "parameters": {
             "type": "object", "properties": {"tz": {"enum": ["UTC", "CET"]}}, "required": ["tz"],
             "additionalProperties": False}}}]
SEEDS = range(8)


def _chat(client, seed: int, **kw):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}],
                                          temperature=1.0, seed=seed, max_tokens=kw.pop("max_tokens", 120), **kw)


def _extra(msg, name: str):
    return getattr(msg, name, None) if getattr(msg, name, None) is not None else (msg.model_extra or {}).get(name)


@pytest.fixture(scope="module")
def tok(tiny_model) -> Tokenizer:
    return Tokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def viable(tok):
    """viable(schema, text): can `text` still be completed to JSON valid for `schema`? llguidance's own schema
    compiler decides (not our grammar text or masks): the oracle for answers cut off by max_tokens."""
    grammars: dict[str, str] = {}

    def check(schema: dict, text: str) -> bool:
        key = json.dumps(schema, sort_keys=True)
        if key not in grammars:
            grammars[key] = llguidance.LLMatcher.grammar_from_json_schema(schema)
        m = llguidance.LLMatcher(ll_tokenizer(tok), grammars[key], log_level=0)
        ids = tok.encode(text, add_special_tokens=False)
        return m.validate_tokens(ids) == len(ids) and not m.is_error()
    return check


def test_viable_prefix_oracle_rejects_what_the_schema_cannot_complete(viable):
    """The oracle must be able to say no, or the cut-off branches below check nothing."""
    assert viable(SCHEMA, '{"city":\n "Paris", \t "n":56\r\n , "ok" :') and viable(SCHEMA, "")
    for bad in ('{"city": "Lyon"', '{"city":"Rome","n":100', '{"city":"Rome","n":1,"ok":true,', '[1'):
        assert not viable(SCHEMA, bad), bad
    assert viable({"type": "object"}, '{"a": [1, {"b"') and not viable({"type": "object"}, '"a"')


def test_response_format_json_schema_holds_for_every_finished_answer(client, viable):
    rf = {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA}}
    finished = 0
    for seed in SEEDS:
        c = _chat(client, seed, response_format=rf, max_tokens=200).choices[0]   # 5 of 8 finish here
        if c.finish_reason == "stop":
            jsonschema.validate(json.loads(c.message.content), SCHEMA)
            finished += 1
        else:       # cut off: still reasoning (no content), or part way into the answer - a viable prefix
            assert c.finish_reason == "length"
            assert viable(SCHEMA, c.message.content or "")
    assert finished >= 2


def test_json_object_and_vllm_field_names(client, viable):
    # any object: the random model writes long keys, so ~1 in 4 finish even at 360 tokens; 16 seeds
    objects = [_chat(client, s, response_format={"type": "json_object"}, max_tokens=360).choices[0] for s in range(16)]
    assert any(c.finish_reason == "stop" for c in objects)
    for c in objects:
        if c.finish_reason == "stop":
            assert isinstance(json.loads(c.message.content), dict)
        else:
            assert c.finish_reason == "length" and viable({"type": "object"}, c.message.content or "")
    for extra in ({"structured_outputs": {"choice": ["yes", "no"]}}, {"guided_choice": ["yes", "no"]}):
        answers = [_chat(client, s, extra_body=extra).choices[0] for s in SEEDS]
        assert {c.message.content for c in answers if c.finish_reason == "stop"} <= {"yes", "no"}
        assert any(c.finish_reason == "stop" for c in answers)
    guided = [_chat(client, s, extra_body={"guided_json": SCHEMA}).choices[0] for s in SEEDS]
    for c in guided:
        if c.finish_reason == "stop":
            jsonschema.validate(json.loads(c.message.content), SCHEMA)


def test_completions_follow_regex_and_schema(client):
    for seed in SEEDS:
        r = client.completions.create(model=MODEL, prompt="Code:", max_tokens=20, temperature=1.0, seed=seed,
                                      extra_body={"structured_outputs": {"regex": "[a-c]{3}-[0-9]{2}"}})
        assert re.fullmatch("[a-c]{3}-[0-9]{2}", r.choices[0].text) and r.choices[0].finish_reason == "stop"
    compact = [client.completions.create(model=MODEL, prompt="JSON:", max_tokens=80, temperature=1.0, seed=seed,
                                         extra_body={"structured_outputs": {"json": SCHEMA, "disable_any_whitespace": True}})
               .choices[0] for seed in SEEDS]
    assert all(c.finish_reason == "stop" for c in compact)      # no whitespace to wander in: all finish
    for c in compact:
        jsonschema.validate(json.loads(c.text), SCHEMA)
        assert not re.search(r"\s", c.text.replace('"Paris"', "").replace('"Rome"', ""))


def test_streamed_structured_answer_is_valid_json_token_by_token(client):
    rf = {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA}}
    for seed in SEEDS:
        chunks = [ch.choices[0] for ch in _chat(client, seed, response_format=rf, stream=True, max_tokens=200)
                  if ch.choices]
        if chunks[-1].finish_reason != "stop":
            continue
        parts = [c.delta.content or "" for c in chunks]
        jsonschema.validate(json.loads("".join(parts)), SCHEMA)
        assert len([p for p in parts if p]) > 1                # token by token, not one chunk at the end
        return
    pytest.fail("no seed finished")


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_tool_choice_forces_a_valid_call(client, choice):
    calls = 0
    for seed in SEEDS:
        c = _chat(client, seed, tools=TOOLS, tool_choice=choice, max_tokens=180).choices[0]
        if c.finish_reason != "tool_calls":
            assert c.finish_reason == "length"         # cut off while reasoning or mid-arguments
            continue
        [call] = c.message.tool_calls
        names = ["get_time"] if isinstance(choice, dict) else ["get_weather", "get_time"]
        assert call.function.name in names
        schema = next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == call.function.name)
        jsonschema.validate(json.loads(call.function.arguments), schema)
        calls += 1
    assert calls >= 1


@pytest.mark.parametrize("kw, param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {"type": "string"}}}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strange"}}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"extra_body": {"structured_outputs": {"regex": "(?<=a)b"}}}, "structured_outputs.regex"),
    ({"extra_body": {"structured_outputs": {"grammar": "start: \"a\""}}}, "structured_outputs.grammar"),
    ({"response_format": {"type": "json_object"}, "extra_body": {"guided_choice": ["a"]}}, "guided_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
])
def test_unsupported_constraints_are_400_naming_the_field(client, kw, param):
    with pytest.raises(openai.BadRequestError) as exc:
        _chat(client, 0, **kw)
    assert exc.value.body["param"] == param, exc.value.body


def test_reasoning_is_sent_under_both_names(client):
    rf = {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA}}
    seen = 0
    for seed in SEEDS:
        msg = _chat(client, seed, response_format=rf, max_tokens=24).choices[0].message
        assert _extra(msg, "reasoning") == _extra(msg, "reasoning_content")
        seen += bool(_extra(msg, "reasoning"))
        for ch in _chat(client, seed, response_format=rf, max_tokens=24, stream=True):
            d = ch.choices[0].delta if ch.choices else None
            if d is not None and _extra(d, "reasoning") is not None:
                assert _extra(d, "reasoning") == _extra(d, "reasoning_content")
    assert seen >= 1


@pytest.fixture(scope="module")
def forced(tok) -> int:
    """A plain word's token id: a logit bias of 100 on it makes the answer that word, repeated, with no header."""
    return tok.encode(" sea", add_special_tokens=False)[0]


@pytest.mark.parametrize("max_tokens", [12, 60])     # under and over the parser's 48-token header limit
def test_chat_logprobs_cover_every_content_token(client, forced, max_tokens):
    """An answer without a harmony header: every token is content, has its logprob entry, and streams as it
    comes (each chunk's text is exactly its entries' tokens), not held back until the header limit or the end."""
    kw = dict(logprobs=True, top_logprobs=2, max_tokens=max_tokens, temperature=0, logit_bias={str(forced): 100})
    c = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], **kw)
    entries = c.choices[0].logprobs.content
    assert c.usage.completion_tokens == max_tokens and len(entries) == max_tokens
    assert "".join(e.token for e in entries) == c.choices[0].message.content
    assert all(len(e.top_logprobs) == 2 and e.logprob <= 0 for e in entries)
    chunks = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                                 stream=True, **kw))
    with_text = [ch.choices[0] for ch in chunks if ch.choices and ch.choices[0].delta.content]
    assert len(with_text) > 1 and "".join(ch.delta.content for ch in with_text) == c.choices[0].message.content
    for ch in with_text:
        assert "".join(e.token for e in ch.logprobs.content) == ch.delta.content
    assert len(with_text[0].logprobs.content) < max_tokens            # the first text came before the last token
    streamed = [e for ch in chunks if ch.choices and ch.choices[0].logprobs for e in ch.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in entries]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in entries], abs=1e-4)


def test_chat_logprobs_of_a_structured_answer_are_its_content_tokens(client):
    rf = {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA}}
    for seed in SEEDS:
        c = _chat(client, seed, response_format=rf, logprobs=True, max_tokens=200).choices[0]
        if c.finish_reason == "stop":
            assert "".join(e.token for e in c.logprobs.content) == c.message.content
            return
    pytest.fail("no seed finished")
