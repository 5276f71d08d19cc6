"""OpenAI chat messages -> the harmony prompt GPT-OSS was trained on, as token ids.

The prompt is built as a list of segments (special-token names and plain text) and only then turned
into ids: special tokens by their tokenizer id, text by the tokenizer's encoder. So a user who types
"<|end|>" in a message gets text, never a control token, whatever the tokenizer does with strings.
Layout follows the gpt-oss chat template and the harmony guide: system (identity, cutoff, date,
reasoning effort, channels), developer (instructions + tools), the turns, then `<|start|>assistant`.
"""
from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from typing import Any

from mini_vllm.harmony.tokens import HarmonyTokens, TokenizerLike
from mini_vllm.harmony.typescript import render_functions_namespace

MODEL_IDENTITY = "You are ChatGPT, a large language model trained by OpenAI."
KNOWLEDGE_CUTOFF = "2024-06"
REASONING_EFFORTS = ("low", "medium", "high")


class ChatRenderError(ValueError):
    """A conversation that cannot be rendered (the API answers 400 naming `param`)."""

    def __init__(self, message: str, param: str = "messages") -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Special:
    name: str  # "start", "end", ... as in HarmonyTokens

    def __str__(self) -> str:
        return f"<|{self.name.rstrip('_')}|>"


Segment = str | Special
S, E, M, C, R, CALL, CON = (Special(n) for n in ("start", "end", "message", "channel", "return_", "call",
                                                  "constrain"))


def content_text(content: Any, param: str) -> str:
    """OpenAI message content (a string, a list of text parts, or None) as one string."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                raise ChatRenderError("only text content parts are supported", f"{param}.content[{i}]")
        return "".join(parts)
    raise ChatRenderError("content must be a string or a list of text parts", f"{param}.content")


def system_text(reasoning_effort: str, has_tools: bool, date: str) -> str:
    text = (f"{MODEL_IDENTITY}\nKnowledge cutoff: {KNOWLEDGE_CUTOFF}\nCurrent date: {date}\n\n"
            f"Reasoning: {reasoning_effort}\n\n"
            "# Valid channels: analysis, commentary, final. Channel must be included for every message.")
    if has_tools:
        text += "\nCalls to these tools must go to the commentary channel: 'functions'."
    return text


def developer_text(instructions: str, tools: list[dict[str, Any]]) -> str:
    text = f"# Instructions\n\n{instructions}\n\n" if instructions else ""
    if tools:
        text += "# Tools\n\n" + render_functions_namespace(tools)
    return text


def _assistant_turn(msg: dict[str, Any], idx: int, later_final: bool, call_names: dict[str, str]) -> list[Segment]:
    param = f"messages[{idx}]"
    content = content_text(msg.get("content"), param)
    calls = msg.get("tool_calls") or []
    if not calls:
        return [S, "assistant", C, "final", M, content, E]
    out: list[Segment] = []
    thinking = msg.get("reasoning_content") or msg.get("reasoning") or content
    if thinking and not later_final:  # the only case where earlier CoT is shown again (as in the template)
        out += [S, "assistant", C, "analysis", M, thinking, E]
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ChatRenderError("tool call needs function.name", f"{param}.tool_calls[{j}]")
        args = fn.get("arguments") or "{}"
        if not isinstance(args, str):
            raise ChatRenderError("function.arguments must be a JSON string", f"{param}.tool_calls[{j}]")
        if call.get("id"):
            call_names[call["id"]] = fn["name"]
        call_names[""] = fn["name"]  # the latest call, for tool messages without an id
        out += [S, "assistant", C, f"commentary to=functions.{fn['name']} ", CON, "json", M, args, CALL]
    return out


def render_segments(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                    reasoning_effort: str | None = None, date: str | None = None) -> list[Segment]:
    """The prompt as segments; `render_chat` turns them into ids."""
    effort = reasoning_effort or "medium"
    if effort not in REASONING_EFFORTS:
        raise ChatRenderError(f"reasoning_effort must be one of {list(REASONING_EFFORTS)}", "reasoning_effort")
    if not messages:
        raise ChatRenderError("messages must not be empty")
    tools = tools or []
    date = date or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    instructions = []
    turns: list[tuple[int, dict[str, Any]]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ("system", "developer", "user", "assistant", "tool"):
            raise ChatRenderError("role must be system, developer, user, assistant or tool", f"messages[{i}].role")
        if msg["role"] in ("system", "developer"):
            instructions.append(content_text(msg.get("content"), f"messages[{i}]"))
        else:
            turns.append((i, msg))
    out: list[Segment] = [S, "system", M, system_text(effort, bool(tools), date), E]
    dev = developer_text("\n\n".join(instructions), tools)
    if dev:
        out += [S, "developer", M, dev, E]
    call_names: dict[str, str] = {}
    for k, (i, msg) in enumerate(turns):
        role = msg["role"]
        if role == "user":
            out += [S, "user", M, content_text(msg.get("content"), f"messages[{i}]"), E]
        elif role == "assistant":
            later_final = any(m["role"] == "assistant" and not m.get("tool_calls") for _, m in turns[k + 1:])
            out += _assistant_turn(msg, i, later_final, call_names)
        else:
            name = call_names.get(msg.get("tool_call_id") or "") or msg.get("name") or call_names.get("")
            if not name:
                raise ChatRenderError("tool message without a preceding assistant tool call", f"messages[{i}]")
            out += [S, f"functions.{name} to=assistant", C, "commentary", M,
                    content_text(msg.get("content"), f"messages[{i}]"), E]
    return out + [S, "assistant"]


def segments_to_ids(segments: list[Segment], tokenizer: TokenizerLike, tokens: HarmonyTokens) -> list[int]:
    ids: list[int] = []
    for seg in segments:
        if isinstance(seg, Special):
            ids.append(getattr(tokens, seg.name))
        elif seg:
            ids.extend(encode_text(seg, tokenizer))
    return ids


_SPECIAL_LITERAL = re.compile(r"<(?=\|[a-z_]+\|>)")


def encode_text(text: str, tokenizer: TokenizerLike) -> list[int]:
    """Encode message text so that a literal "<|end|>" in it stays text: tokenizers match added
    special tokens inside strings, so the text is cut between "<" and "|end|>" before encoding."""
    cuts = [0] + [m.start() + 1 for m in _SPECIAL_LITERAL.finditer(text)] + [len(text)]
    pieces = [text[a:b] for a, b in zip(cuts, cuts[1:])]
    return [i for piece in pieces if piece for i in tokenizer.encode(piece, add_special_tokens=False)]


def render_chat(messages: list[dict[str, Any]], tokenizer: TokenizerLike, tokens: HarmonyTokens | None = None,
                tools: list[dict[str, Any]] | None = None, reasoning_effort: str | None = None,
                date: str | None = None) -> list[int]:
    """Prompt token ids for a chat request, ending with `<|start|>assistant` (the model writes the header)."""
    tokens = tokens or HarmonyTokens.from_tokenizer(tokenizer)
    return segments_to_ids(render_segments(messages, tools, reasoning_effort, date), tokenizer, tokens)
