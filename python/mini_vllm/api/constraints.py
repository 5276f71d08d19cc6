"""A request's constraint (response_format, structured_outputs, guided_*, tool_choice) as a checked grammar.

Checked before the request reaches the engine: a schema or regex llguidance cannot compile, two
constraints at once, or a tool_choice naming an unknown tool is a 400 naming the field - never a failure
halfway through generation. The check runs off the event loop (the first one builds llguidance's view of
the tokenizer, about a second for GPT-OSS's vocabulary).
"""
from __future__ import annotations

import asyncio
from typing import Any

from mini_vllm.api.errors import APIError
from mini_vllm.api.schemas import _Sampling
from mini_vllm.structured.grammar import (ConstraintError, body_from_request, chat_grammar, completion_grammar,
                                          tool_call_grammar)

GUIDED = ("guided_json", "guided_regex", "guided_choice", "guided_grammar")


def forced_tool(tool_choice: Any) -> tuple[bool, str | None]:
    """(a tool call is required, the one function it must call or None for any)."""
    if tool_choice == "required":
        return True, None
    if isinstance(tool_choice, dict):
        return True, tool_choice["function"]["name"]
    return False, None


async def request_grammar(req: _Sampling, tokenizer: Any, chat: bool,
                          tools: list[dict[str, Any]] | None = None) -> str | None:
    """The Lark grammar the answer must follow (None: unconstrained); APIError 400 when it cannot be."""
    try:
        body = body_from_request(req.response_format, req.structured_outputs,
                                 {k: getattr(req, k) for k in GUIDED})
        required, name = forced_tool(getattr(req, "tool_choice", None)) if chat else (False, None)
        if required and body is not None:
            raise ConstraintError("tool_choice forces a tool call; it cannot be combined with "
                                  f"{body.param}", body.param)
        if required:
            if not tools:
                raise ConstraintError("tool_choice requires a tool call but the request has no tools", "tool_choice")
            grammar = tool_call_grammar(tools, name)
            param = "tool_choice" if name else "tools"
        elif body is not None:
            grammar = chat_grammar(body) if chat else completion_grammar(body)
            param = body.param
        else:
            return None
    except ConstraintError as e:
        raise APIError(400, str(e), e.param) from None
    from mini_vllm.structured.matcher import grammar_error

    problem = await asyncio.to_thread(grammar_error, grammar, tokenizer)
    if problem:
        raise APIError(400, f"{param}: not supported: {problem}", param)
    return grammar
