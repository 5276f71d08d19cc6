"""Incremental parser for what GPT-OSS generates after `<|start|>assistant`.

A generation is a run of messages `<|channel|>NAME [to=RECIPIENT] [<|constrain|>json]<|message|>BODY`
closed by <|end|> (another message follows after <|start|>assistant), <|return|> (answer done) or
<|call|> (tool call done). Bodies route by channel: analysis -> reasoning, final (or commentary with
no recipient) -> content, recipient functions.NAME -> a tool call whose body is the JSON arguments.

Fed one token at a time, it returns deltas ready for streaming. It never raises on odd input: a header
that does not parse, a missing <|start|>, a stray control token, all degrade to plain content, and
nothing generated is lost (vLLM's most reported GPT-OSS failure is a 500 from its parser here).
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Callable, Literal

from mini_vllm.harmony.tokens import HarmonyTokens, TokenizerLike

Kind = Literal["reasoning", "content", "tool_args"]
HEADER_LIMIT = 48  # tokens; real headers are ~5-20 tokens, longer means the model is not writing one
_RECIPIENT_NAME = re.compile(r"[^\s<]*\s*")


def _pre_channel_prefix(text: str) -> bool:
    """Could `text` begin a header's part before its first control token - at most the role and a
    recipient, as in "assistant to=functions.get_weather"?"""
    t = text.lstrip()
    if "assistant".startswith(t):
        return True
    if t.startswith("assistant"):
        t = t[len("assistant"):]
        if not t[0].isspace():
            return False
        t = t.lstrip()
    if "to=".startswith(t):
        return True
    return t.startswith("to=") and _RECIPIENT_NAME.fullmatch(t[3:]) is not None

_RECIPIENT = re.compile(r"to=([^\s<]+)")


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str = ""


@dataclass
class ParserEvent:
    """kind 'tool_call' opens tool call `tool_index` (id, name); the others carry text for their field."""

    kind: Literal["reasoning", "content", "tool_call", "tool_args"]
    text: str = ""
    tool_index: int | None = None
    tool_id: str | None = None
    tool_name: str | None = None


@dataclass
class ParsedMessage:
    reasoning: str = ""
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)


class _TextStream:
    """Incremental detokenizer: emits text only once it no longer ends inside a multi-byte character."""

    def __init__(self, tokenizer: TokenizerLike) -> None:
        self._tok = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # start of the window that is re-decoded for context
        self._read = 0    # ids before this have been emitted

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        return self._emit(final=False)

    def flush(self) -> str:
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        if self._read == len(self._ids):
            return ""
        head = self._tok.decode(self._ids[self._prefix:self._read], skip_special_tokens=False)
        full = self._tok.decode(self._ids[self._prefix:], skip_special_tokens=False)
        if not final and full.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return full[len(head):]


class HarmonyParser:
    """Feed generated token ids; collect events (streaming) and `.result` (whole message)."""

    def __init__(self, tokenizer: TokenizerLike, tokens: HarmonyTokens | None = None,
                 new_tool_id: Callable[[], str] | None = None, track_routes: bool = False) -> None:
        self._tok = self.tokenizer = tokenizer
        self.t = tokens or HarmonyTokens.from_tokenizer(tokenizer)
        self._new_id = new_tool_id or (lambda: f"call_{uuid.uuid4().hex[:24]}")
        self.result = ParsedMessage()
        self._state: Literal["header", "body", "between"] = "header"
        self._header: list[int] = []
        self._kind: Kind = "content"
        self._body: _TextStream | None = None
        self.last_kind: Kind | None = None  # where the last fed token's text went (None: control/header)
        # (index of a fed token, where its text went), in order, as soon as that is known - a header's
        # tokens are decided only when the header turns out to be text. take_routed() drains it. Kept only
        # with track_routes (chat logprobs need it; plain streaming does not pay for it).
        self.routed: list[tuple[int, Kind]] = []
        self._track = track_routes
        self._fed = 0                       # index of the token being fed
        self._header_idx: list[int] = []

    # -- public -------------------------------------------------------------------------------------
    def feed(self, token_id: int) -> list[ParserEvent]:
        self.last_kind = None
        self._cur = self._fed
        self._fed += 1
        t = self.t
        if self._state == "header":
            return self._feed_header(token_id)
        if self._state == "body":
            if token_id in (t.end, t.return_, t.call):
                events = self._close_body()
                self._state = "between"
                return events
            if token_id == t.start:
                return self._close_body() + self._open_header()
            if token_id in t.all_ids:  # <|channel|>/<|message|>/<|constrain|> inside a body: drop it
                return []
            return self._body_text(token_id)
        # between messages: expect <|start|>
        if token_id == t.start:
            return self._open_header()
        if token_id in t.all_ids:
            return []
        self._open_body("content")  # text without a header: degrade to content
        return self._body_text(token_id)

    def feed_many(self, token_ids: list[int]) -> list[ParserEvent]:
        events: list[ParserEvent] = []
        for tid in token_ids:
            events += self.feed(tid)
        return events

    def finish(self) -> list[ParserEvent]:
        """End of generation: flush held-back text; an unfinished header becomes content."""
        if self._state == "header":
            events = self._header_as_content()
        elif self._state == "body":
            events = self._close_body()
        else:
            events = []
        self._state = "between"
        return events

    @property
    def undecided_from(self) -> int:
        """Feed index of the first token whose destination is not known yet (a held header's first)."""
        return self._header_idx[0] if self._state == "header" and self._header_idx else self._fed

    def take_routed(self) -> list[tuple[int, Kind]]:
        """Tokens (by feed index) whose destination became known since the last call, in feed order."""
        out, self.routed = self.routed, []
        return out

    @property
    def has_tool_calls(self) -> bool:
        return bool(self.result.tool_calls)

    # -- header -------------------------------------------------------------------------------------
    def _open_header(self) -> list[ParserEvent]:
        self._state, self._header, self._header_idx = "header", [], []
        return []

    def _feed_header(self, token_id: int) -> list[ParserEvent]:
        t = self.t
        if token_id == t.message:
            return self._header_done()
        if token_id in (t.end, t.return_, t.call, t.start):
            events = self._header_as_content() + self._close_body()   # flushed: no held byte is lost
            self._state = "between"
            if token_id == t.start:
                self._open_header()
            return events
        self._header.append(token_id)
        self._header_idx.append(self._cur)
        if len(self._header) > HEADER_LIMIT or not self._may_be_header():
            return self._header_as_content()
        return []

    def _may_be_header(self) -> bool:
        """False once the held tokens cannot start a header: text before any control token that is not
        a role or recipient. Then it is content, streamed from this token on instead of held back."""
        if any(tid in self.t.all_ids for tid in self._header):
            return True
        text = self._tok.decode(self._header, skip_special_tokens=False)
        if text.endswith("\ufffd"):            # inside a multi-byte character: wait for the rest
            return True
        return _pre_channel_prefix(text)

    def _header_text(self) -> tuple[str, str]:
        """(full header with markers, text after <|channel|>)."""
        parts: list[str] = []
        run: list[int] = []
        for tid in self._header:
            if tid in self.t.all_ids:
                parts.append(self._tok.decode(run, skip_special_tokens=False))
                run = []
                parts.append("<|channel|>" if tid == self.t.channel else "<|constrain|>" if tid == self.t.constrain else " ")
            else:
                run.append(tid)
        parts.append(self._tok.decode(run, skip_special_tokens=False))
        full = "".join(parts)
        after = full.split("<|channel|>", 1)[1] if "<|channel|>" in full else ""
        return full, after.split("<|constrain|>", 1)[0]

    def _header_done(self) -> list[ParserEvent]:
        full, channel_part = self._header_text()
        words = channel_part.split()
        channel = words[0] if words else ""
        match = _RECIPIENT.search(full)
        recipient = match.group(1) if match else ""
        if recipient.startswith("functions."):
            name = recipient[len("functions."):]
            call = ToolCall(id=self._new_id(), name=name)
            self.result.tool_calls.append(call)
            self._open_body("tool_args")
            return [ParserEvent("tool_call", tool_index=len(self.result.tool_calls) - 1, tool_id=call.id,
                                tool_name=name)]
        self._open_body("reasoning" if channel == "analysis" else "content")
        return []

    def _header_as_content(self) -> list[ParserEvent]:
        ids, idx, self._header, self._header_idx = self._header, self._header_idx, [], []
        self._open_body("content")
        events: list[ParserEvent] = []
        for tid, i in zip(ids, idx):
            if tid not in self.t.all_ids:
                events += self._body_text(tid, i)
        return events

    # -- body ---------------------------------------------------------------------------------------
    def _open_body(self, kind: Kind) -> None:
        self._state, self._kind, self._body = "body", kind, _TextStream(self._tok)

    def _body_text(self, token_id: int, index: int | None = None) -> list[ParserEvent]:
        assert self._body is not None
        self.last_kind = self._kind
        if self._track:
            self.routed.append((self._cur if index is None else index, self._kind))
        return self._emit(self._body.push(token_id))

    def _close_body(self) -> list[ParserEvent]:
        events = self._emit(self._body.flush()) if self._body else []
        self._body = None
        return events

    def _emit(self, text: str) -> list[ParserEvent]:
        if not text:
            return []
        if self._kind == "tool_args":
            idx = len(self.result.tool_calls) - 1
            self.result.tool_calls[idx].arguments += text
            return [ParserEvent("tool_args", text, tool_index=idx)]
        if self._kind == "reasoning":
            self.result.reasoning += text
        else:
            self.result.content += text
        return [ParserEvent(self._kind, text)]
