"""The harmony parser on hand-built generations: routing, tool calls, streaming splits, garbage."""
from __future__ import annotations

import random

import pytest

from mini_vllm.harmony import HarmonyParser, HarmonyTokens

ANALYSIS_FINAL = ("<|channel|>analysis<|message|>User says hi. héllo 🙂<|end|>"
                  "<|start|>assistant<|channel|>final<|message|>The answer is 42.<|return|>")
TOOL = ("<|channel|>analysis<|message|>Need weather.<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
        '{"location": "Paris"}<|call|>')


def parse(tokenizer, ids):
    p = HarmonyParser(tokenizer, new_tool_id=lambda: "call_1")
    events = p.feed_many(ids) + p.finish()
    return p, events


def test_analysis_then_final(tokenizer):
    p, _ = parse(tokenizer, tokenizer.encode(ANALYSIS_FINAL))
    assert p.result.reasoning == "User says hi. héllo 🙂"
    assert p.result.content == "The answer is 42."
    assert not p.has_tool_calls


def test_tool_call(tokenizer):
    p, events = parse(tokenizer, tokenizer.encode(TOOL))
    assert p.result.reasoning == "Need weather."
    assert p.result.content == ""
    [call] = p.result.tool_calls
    assert (call.id, call.name, call.arguments) == ("call_1", "get_weather", '{"location": "Paris"}')
    assert [e.kind for e in events if e.kind == "tool_call"] == ["tool_call"]


def test_recipient_before_channel(tokenizer):
    """The HF template's placement: `<|start|>assistant to=functions.X<|channel|>commentary json`."""
    ids = tokenizer.encode(' to=functions.get_weather<|channel|>commentary json<|message|>{"a": 1}<|call|>')
    p, _ = parse(tokenizer, ids)
    assert [(c.name, c.arguments) for c in p.result.tool_calls] == [("get_weather", '{"a": 1}')]


def test_commentary_without_recipient_is_content(tokenizer):
    p, _ = parse(tokenizer, tokenizer.encode("<|channel|>commentary<|message|>Checking.<|end|>"))
    assert p.result.content == "Checking."


@pytest.mark.parametrize("source", [ANALYSIS_FINAL, TOOL])
def test_streaming_split_at_every_position(tokenizer, source):
    """Deltas concatenate to the whole-message result wherever the stream is cut into steps."""
    ids = tokenizer.encode(source)
    whole, _ = parse(tokenizer, ids)
    for cut in range(len(ids) + 1):
        p = HarmonyParser(tokenizer, new_tool_id=lambda: "call_1")
        events = p.feed_many(ids[:cut]) + p.feed_many(ids[cut:]) + p.finish()
        got = {"reasoning": "", "content": "", "tool_args": ""}
        for e in events:
            if e.kind in got:
                got[e.kind] += e.text
        assert got["reasoning"] == whole.result.reasoning
        assert got["content"] == whole.result.content
        assert got["tool_args"] == "".join(c.arguments for c in whole.result.tool_calls)


def test_deltas_never_split_a_character(tokenizer):
    ids = tokenizer.encode("<|channel|>final<|message|>日本語 🙂<|return|>")
    p = HarmonyParser(tokenizer)
    for tid in ids:
        for e in p.feed(tid):
            assert "\ufffd" not in e.text
    assert p.result.content == "日本語 🙂"


def test_plain_text_without_header_degrades_to_content(tokenizer):
    p, _ = parse(tokenizer, tokenizer.encode("Just text, no harmony at all."))
    assert p.result.content == "Just text, no harmony at all."


@pytest.mark.parametrize("source, content", [
    ("<|channel|>final<|end|>oops", "finaloops"),                       # header closed by <|end|>
    ("<|channel|>final<|message|>a<|message|>b<|channel|>c<|return|>", "abc"),  # stray controls in body
    ("<|channel|>final<|message|>x<|end|>loose<|end|>", "xloose"),      # text where <|start|> belongs
    ("<|channel|>final<|message|>cut off", "cut off"),                    # no end token at all
])
def test_malformed_sequences_degrade(tokenizer, source, content):
    p, _ = parse(tokenizer, tokenizer.encode(source))
    assert p.result.content == content


def test_random_garbage_never_raises_and_keeps_text(tokenizer):
    t = HarmonyTokens.from_tokenizer(tokenizer)
    rng = random.Random(0)
    vocab = tokenizer.vocab_size
    for _ in range(200):
        ids = [rng.randrange(vocab) for _ in range(rng.randrange(1, 80))]
        p, events = parse(tokenizer, ids)
        emitted = "".join(e.text for e in events).replace("\ufffd", "")
        plain = tokenizer.decode([i for i in ids if i not in t.all_ids], skip_special_tokens=False)
        # no text is invented: what comes back is at most the generated text (a character whose bytes a
        # control token splits comes back as U+FFFD, not counted), less what was spent on headers
        assert len(emitted) <= len(plain.replace("\ufffd", "")) + 1
        assert isinstance(p.result.content, str)


def test_text_without_header_streams_from_the_first_token(tokenizer):
    """No header: content is known at the first token that cannot begin one, and streams from there."""
    ids = tokenizer.encode("Just text, no harmony at all.")
    p = HarmonyParser(tokenizer, track_routes=True)
    first = p.feed(ids[0]) + p.feed(ids[1])
    assert "".join(e.text for e in first) and all(e.kind == "content" for e in first)
    for tid in ids[2:]:
        assert p.feed(tid), "every further token streams at once"
    assert [i for i, k in p.take_routed()] == list(range(len(ids)))


@pytest.mark.parametrize("text", ["assistant to=functions.get_weather", " to=functions.a_b", "assis", "  "])
def test_role_and_recipient_text_is_still_a_header(tokenizer, text):
    p = HarmonyParser(tokenizer, track_routes=True)
    assert p.feed_many(tokenizer.encode(text)) == [] and p.take_routed() == []


def test_routed_indices_follow_each_tokens_destination(tokenizer):
    ids = tokenizer.encode(ANALYSIS_FINAL)
    p = HarmonyParser(tokenizer, track_routes=True)
    p.feed_many(ids)
    routed = dict(p.take_routed())
    t = HarmonyTokens.from_tokenizer(tokenizer)
    msgs = [i for i, tid in enumerate(ids) if tid == t.message]
    ends = [i for i, tid in enumerate(ids) if tid in (t.end, t.return_)]
    assert [i for i, k in routed.items() if k == "reasoning"] == list(range(msgs[0] + 1, ends[0]))
    assert [i for i, k in routed.items() if k == "content"] == list(range(msgs[1] + 1, ends[1]))
    untracked = HarmonyParser(tokenizer)                 # plain streaming: same events, no route list kept
    assert untracked.feed_many(ids) == HarmonyParser(tokenizer, track_routes=True).feed_many(ids)
    assert untracked.take_routed() == []
