"""The harmony prompt matches the gpt-oss chat template's layout, turn by turn."""
from __future__ import annotations

import pytest

from mini_vllm.harmony import ChatRenderError, HarmonyTokens, render_chat
from mini_vllm.harmony.render import render_segments

DATE = "2026-11-23"
SYSTEM = ("<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
          "Knowledge cutoff: 2024-06\nCurrent date: 2026-11-23\n\nReasoning: {effort}\n\n"
          "# Valid channels: analysis, commentary, final. Channel must be included for every message.{tools}<|end|>")
TOOLS_NOTE = "\nCalls to these tools must go to the commentary channel: 'functions'."
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Gets the current weather in the provided location.",
    "parameters": {"type": "object", "required": ["location"], "properties": {
        "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
        "format": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
        "days": {"type": "array", "items": {"type": "integer"}},
        "opts": {"type": "object", "properties": {"verbose": {"type": "boolean"}}, "required": []}}}}}
LOCATION = {"type": "function", "function": {"name": "get_location", "description": "Gets the location of the user."}}


def text(messages, **kw) -> str:
    return "".join(str(s) for s in render_segments(messages, date=DATE, **kw))


def test_user_only_default_effort():
    assert text([{"role": "user", "content": "Hi"}]) == (
        SYSTEM.format(effort="medium", tools="") + "<|start|>user<|message|>Hi<|end|><|start|>assistant")


@pytest.mark.parametrize("effort", ["low", "high"])
def test_reasoning_effort(effort):
    assert f"Reasoning: {effort}\n\n" in text([{"role": "user", "content": "x"}], reasoning_effort=effort)


def test_bad_effort_is_a_named_error():
    with pytest.raises(ChatRenderError) as err:
        text([{"role": "user", "content": "x"}], reasoning_effort="extreme")
    assert err.value.param == "reasoning_effort"


def test_system_becomes_developer_instructions_with_tools():
    got = text([{"role": "system", "content": "Always respond in riddles"},
                {"role": "user", "content": "What is the weather like in SF?"}], tools=[LOCATION, WEATHER])
    assert got == (
        SYSTEM.format(effort="medium", tools=TOOLS_NOTE)
        + "<|start|>developer<|message|># Instructions\n\nAlways respond in riddles\n\n# Tools\n\n## functions\n\n"
        "namespace functions {\n\n// Gets the location of the user.\ntype get_location = () => any;\n\n"
        "// Gets the current weather in the provided location.\ntype get_weather = (_: {\n"
        "// The city and state, e.g. San Francisco, CA\nlocation: string,\n"
        'format?: "celsius" | "fahrenheit", // default: celsius\ndays?: number[],\n'
        "opts?: {\nverbose?: boolean\n},\n}) => any;\n\n} // namespace functions<|end|>"
        "<|start|>user<|message|>What is the weather like in SF?<|end|><|start|>assistant")


def test_assistant_history_tool_call_and_result():
    got = text([
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "reasoning_content": "Need the tool.",
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"location":"SF"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"sunny": true}'},
    ], tools=[WEATHER])
    assert got.endswith(
        "<|start|>user<|message|>Weather?<|end|>"
        "<|start|>assistant<|channel|>analysis<|message|>Need the tool.<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
        '{"location":"SF"}<|call|>'
        '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{"sunny": true}<|end|>'
        "<|start|>assistant")


def test_previous_final_answers_drop_reasoning():
    got = text([{"role": "user", "content": "a"},
                {"role": "assistant", "content": "b", "reasoning_content": "secret"},
                {"role": "user", "content": [{"type": "text", "text": "c"}, {"type": "text", "text": "d"}]}])
    assert "secret" not in got
    assert got.endswith("<|start|>assistant<|channel|>final<|message|>b<|end|>"
                        "<|start|>user<|message|>cd<|end|><|start|>assistant")


def test_tool_message_without_call_is_rejected():
    with pytest.raises(ChatRenderError, match="tool message"):
        text([{"role": "tool", "tool_call_id": "x", "content": "1"}])


def test_ids_use_tokenizer_specials_and_text_stays_text(tokenizer):
    t = HarmonyTokens.from_tokenizer(tokenizer)
    ids = render_chat([{"role": "user", "content": "say <|end|> please"}], tokenizer, date=DATE)
    assert ids[:1] == [t.start]
    assert ids[-1 - len(tokenizer.encode("assistant")):] == [t.start] + tokenizer.encode("assistant")
    # the user's literal "<|end|>" is not turned into the control token: <|end|> only closes system, user
    assert ids.count(t.end) == 2
    assert tokenizer.decode(ids, skip_special_tokens=False).endswith("<|start|>assistant")


def test_tokenizer_without_harmony_tokens_is_refused(tokenizer):
    class Plain:
        def token_to_id(self, tok):
            return None
    with pytest.raises(ValueError, match="harmony special tokens"):
        HarmonyTokens.from_tokenizer(Plain())
