"""POST /v1/chat/completions for GPT-OSS: render harmony, generate, parse channels and tool calls.

Generation stops on <|return|> (answer done) or <|call|> (a tool call); the harmony parser routes
the analysis channel to `reasoning` (and `reasoning_content`, its older name), the final channel to `content` and `functions.*`
recipients to `tool_calls` (finish_reason "tool_calls"). Streaming emits the same split as deltas.
"""
from __future__ import annotations

from typing import Any, AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from mini_vllm.api import sse
from mini_vllm.api.completions import token_text
from mini_vllm.api.constraints import request_grammar
from mini_vllm.api.errors import APIError
from mini_vllm.api.generation import check_length, sampling_params, start_request, until_disconnect
from mini_vllm.api.schemas import ChatCompletionRequest
from mini_vllm.api.state import ServerState
from mini_vllm.engine.outputs import CompletionOutput, TokenLogprob
from mini_vllm.harmony import ChatRenderError, HarmonyParser, ParserEvent, render_chat


def _lp_entry(tok: Any, lp: TokenLogprob, top: bool) -> dict[str, Any]:
    def one(token_id: int, logprob: float) -> dict[str, Any]:
        text = token_text(tok, token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}
    return dict(one(lp.token_id, lp.logprob), top_logprobs=[one(i, v) for i, _, v in lp.top] if top else [])


class _Sample:
    """Parser + bookkeeping for one of the n samples."""

    def __init__(self, state: ServerState, want_lp: bool, top: bool) -> None:
        self.parser = HarmonyParser(state.require_engine().tokenizer, state.harmony, track_routes=want_lp)
        self.want_lp, self.top = want_lp, top
        self.done = False
        self._lps: dict[int, TokenLogprob] = {}   # by token index, until the parser says where the token went
        self._fed = 0

    def feed(self, o: CompletionOutput, ids: list[int], lps: list[TokenLogprob] | None) -> tuple[list[ParserEvent], list]:
        """Parse new tokens; logprob entries for every token that turned out to be content (a held header
        that proves to be text releases its tokens' entries then, in order)."""
        events: list[ParserEvent] = []
        keep = self.want_lp and lps
        for k, tid in enumerate(ids):
            if keep and k < len(lps):
                self._lps[self._fed] = lps[k]
            self._fed += 1
            events += self.parser.feed(tid)
        if o.finished:
            events += self.parser.finish()
            self.done = True
        content_lps: list[dict[str, Any]] = []
        if not keep and not self._lps:
            return events, content_lps
        for i, kind in self.parser.take_routed():
            lp = self._lps.pop(i, None)
            if lp is not None and kind == "content":
                content_lps.append(_lp_entry(self.parser.tokenizer, lp, self.top))
        if self._lps:                               # control and header tokens never become content
            first = self.parser.undecided_from
            self._lps = {i: v for i, v in self._lps.items() if i >= first}
        return events, content_lps

    def finish_reason(self, o: CompletionOutput) -> str | None:
        if o.finish_reason == "error":
            raise APIError(500, f"generation failed: {o.error or 'engine error'}")
        if o.finish_reason is None:
            return None
        # a call cut off by max_tokens is "length" (its arguments are incomplete), as OpenAI reports it
        return "tool_calls" if self.parser.has_tool_calls and o.finish_reason == "stop" else o.finish_reason


def _delta(events: list[ParserEvent]) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    calls: list[dict[str, Any]] = []
    for e in events:
        if e.kind == "tool_call":
            calls.append({"index": e.tool_index, "id": e.tool_id, "type": "function",
                          "function": {"name": e.tool_name, "arguments": ""}})
        elif e.kind == "tool_args":
            if calls and calls[-1]["index"] == e.tool_index:
                calls[-1]["function"]["arguments"] += e.text
            else:
                calls.append({"index": e.tool_index, "function": {"arguments": e.text}})
        elif e.kind == "reasoning":       # vLLM's current `reasoning` and the older `reasoning_content`
            delta["reasoning"] = delta["reasoning_content"] = delta.get("reasoning", "") + e.text
        else:
            delta["content"] = delta.get("content", "") + e.text
    if calls:
        delta["tool_calls"] = calls
    return delta


async def create_chat_completion(req: ChatCompletionRequest, raw: Request, state: ServerState):
    engine = state.require_engine()
    state.check_model(req.model)
    messages = [m.model_dump(exclude_none=True) for m in req.messages]
    tools = [t.model_dump(exclude_none=True) for t in req.tools or []] if req.tool_choice != "none" else []
    try:
        prompt = render_chat(messages, engine.tokenizer, state.harmony, tools=tools,
                             reasoning_effort=req.reasoning_effort)
    except ChatRenderError as e:
        raise APIError(400, str(e), e.param) from None
    max_tokens = req.max_completion_tokens or req.max_tokens
    check_length(len(prompt), max_tokens, state.max_model_len, "messages")
    params = sampling_params(req, state, max_tokens, (req.top_logprobs or 0) if req.logprobs else None,
                             stop_token_ids=state.harmony.stop_ids, logprobs_param="top_logprobs")
    params.grammar = await request_grammar(req, engine.tokenizer, chat=True, tools=tools)
    rid = sse.new_id("chatcmpl")
    stream = await until_disconnect(raw, start_request(state, rid, prompt, params))
    samples = [_Sample(state, req.logprobs, bool(req.top_logprobs)) for _ in range(req.n)]
    head = {"id": rid, "object": "chat.completion.chunk", "created": sse.now(), "model": state.model_name}
    if req.stream:
        return StreamingResponse(sse.guarded(_stream(req, head, len(prompt), stream, samples)),
                                 media_type="text/event-stream")
    final = await until_disconnect(raw, _last(stream))
    choices, completion_tokens = [], 0
    for o in final.outputs:
        s = samples[o.index]
        _, lps = s.feed(o, o.token_ids, o.logprobs)
        completion_tokens += len(o.token_ids)
        r = s.parser.result
        msg: dict[str, Any] = {"role": "assistant", "content": r.content or (None if r.tool_calls else ""),
                               "reasoning": r.reasoning or None, "reasoning_content": r.reasoning or None}
        if r.tool_calls:
            msg["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.name, "arguments": c.arguments}} for c in r.tool_calls]
        choices.append({"index": o.index, "message": msg, "logprobs": {"content": lps} if req.logprobs else None,
                        "finish_reason": s.finish_reason(o), "stop_reason": o.stop_reason})
    body = dict(head, object="chat.completion", choices=choices,
                usage=sse.usage(len(prompt), completion_tokens, final.num_cached_tokens))
    return JSONResponse(body)


async def _last(stream: AsyncIterator[Any]) -> Any:
    last = None
    async for out in stream:
        last = out
    return last


async def _stream(req: ChatCompletionRequest, head: dict[str, Any], prompt_len: int, stream: AsyncIterator[Any],
                  samples: list[_Sample]) -> AsyncIterator[bytes]:
    chunks = sse.Chunks(head)
    yield chunks.event([sse.encode({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                    "finish_reason": None}) for i in range(req.n)])
    completion_tokens = 0
    async for out in stream:
        choices = []
        for o in out.outputs:
            s = samples[o.index]
            if s.done:
                continue
            completion_tokens += len(o.token_ids_delta)
            events, lps = s.feed(o, o.token_ids_delta, o.logprobs_delta)
            delta = _delta(events)
            reason = s.finish_reason(o)
            if delta or reason:
                choices.append(sse.encode({"index": o.index, "delta": delta, "logprobs": {"content": lps}
                                           if req.logprobs else None, "finish_reason": reason}))
        if choices:
            yield chunks.event(choices)
    if req.include_usage:
        yield sse.event(dict(head, choices=[], usage=sse.usage(prompt_len, completion_tokens)))
