"""POST /v1/completions: prompts (text or token ids, one or many) -> engine -> OpenAI text_completion.

Each prompt is its own engine request; with n samples each, choice index = prompt * n + sample,
as OpenAI numbers them. Streams interleave prompts as tokens arrive.
"""
from __future__ import annotations

from typing import Any, AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from mini_vllm.api import sse
from mini_vllm.api.constraints import request_grammar
from mini_vllm.api.errors import APIError
from mini_vllm.api.generation import check_length, merged, sampling_params, start_all, until_disconnect
from mini_vllm.api.schemas import CompletionRequest
from mini_vllm.api.state import ServerState
from mini_vllm.engine.outputs import CompletionOutput, TokenLogprob


def _prompts(req: CompletionRequest, tokenizer: Any, vocab: int) -> list[list[int]]:
    p = req.prompt
    if isinstance(p, str):
        return [tokenizer.encode(p, add_special_tokens=False)]
    if all(isinstance(x, int) for x in p):
        lists = [list(p)]
    elif all(isinstance(x, str) for x in p):
        return [tokenizer.encode(x, add_special_tokens=False) for x in p]
    else:
        lists = [list(x) for x in p]
    for ids in lists:
        if any(not 0 <= t < vocab for t in ids):
            raise APIError(400, f"prompt token ids must be in [0, {vocab})", "prompt")
    return lists


def token_text(tokenizer: Any, token_id: int) -> str:
    """A token as the text it decodes to (not the raw BPE piece such as "Ġworld"), as OpenAI reports it."""
    return tokenizer.decode([token_id], skip_special_tokens=False)


def completion_logprobs(tokenizer: Any, lps: list[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    tokens = [token_text(tokenizer, lp.token_id) for lp in lps]
    offsets, pos = [], offset
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return {"tokens": tokens, "token_logprobs": [lp.logprob for lp in lps],
            "top_logprobs": [{token_text(tokenizer, i): v for i, _, v in lp.top} for lp in lps], "text_offset": offsets}


def _finish(o: CompletionOutput) -> str | None:
    if o.finish_reason == "error":
        raise APIError(500, f"generation failed: {o.error or 'engine error'}")
    return o.finish_reason


async def create_completion(req: CompletionRequest, raw: Request, state: ServerState):
    engine = state.require_engine()
    state.check_model(req.model)
    tok = engine.tokenizer
    prompts = _prompts(req, tok, int(tok.vocab_size))
    for ids in prompts:
        if not ids:
            raise APIError(400, "prompt must not be empty", "prompt")
        check_length(len(ids), req.max_tokens, state.max_model_len, "prompt")
    params = sampling_params(req, state, req.max_tokens, req.logprobs)
    params.grammar = await request_grammar(req, tok, chat=False)
    rid = sse.new_id("cmpl")
    streams = await until_disconnect(raw, start_all(state, [(f"{rid}-{i}", ids) for i, ids in
                                                                    enumerate(prompts)], params))
    echo = [tok.decode(ids, skip_special_tokens=True) if req.echo else "" for ids in prompts]
    head = {"id": rid, "object": "text_completion", "created": sse.now(), "model": state.model_name}
    if req.stream:
        return StreamingResponse(sse.guarded(_stream(req, head, prompts, echo, streams, tok)), media_type="text/event-stream")
    finals = await until_disconnect(raw, _collect(streams))
    choices, completion_tokens = [], 0
    for pi, out in sorted(finals.items()):
        for o in out.outputs:
            completion_tokens += len(o.token_ids)
            choices.append({"index": pi * req.n + o.index, "text": echo[pi] + o.text,
                            "logprobs": completion_logprobs(tok, o.logprobs or [], len(echo[pi]))
                            if req.logprobs is not None else None,
                            "finish_reason": _finish(o), "stop_reason": o.stop_reason})
    body = dict(head, choices=choices, usage=sse.usage(sum(map(len, prompts)), completion_tokens,
                                                       sum(f.num_cached_tokens for f in finals.values())))
    return JSONResponse(body)


async def _collect(streams: list[AsyncIterator[Any]]) -> dict[int, Any]:
    finals: dict[int, Any] = {}
    async for pi, out in merged(streams):
        finals[pi] = out
    return finals


async def _stream(req: CompletionRequest, head: dict[str, Any], prompts: list[list[int]], echo: list[str],
                  streams: list[AsyncIterator[Any]], tok: Any) -> AsyncIterator[bytes]:
    completion_tokens = 0
    offsets: dict[int, int] = {}
    done: set[int] = set()
    chunks = sse.Chunks(head)
    for pi, text in enumerate(echo):
        for k in range(req.n if text else 0):
            yield chunks.event([sse.encode({"index": pi * req.n + k, "text": text, "logprobs": None,
                                            "finish_reason": None})])
    async for pi, out in merged(streams):
        choices = []
        for o in out.outputs:
            idx = pi * req.n + o.index
            if idx in done or not (o.text_delta or o.token_ids_delta or o.finish_reason):
                continue
            if o.finish_reason:
                done.add(idx)
            completion_tokens += len(o.token_ids_delta)
            if req.logprobs is None:                  # the common case: no dict, no general encoder
                choices.append(chunks.text_choice(idx, o.text_delta, _finish(o), o.stop_reason))
                continue
            lp = completion_logprobs(tok, o.logprobs_delta or [], offsets.get(idx, len(echo[pi])))
            offsets[idx] = offsets.get(idx, len(echo[pi])) + len(o.text_delta)
            choices.append(sse.encode({"index": idx, "text": o.text_delta, "logprobs": lp,
                                       "finish_reason": _finish(o), "stop_reason": o.stop_reason}))
        if choices:
            yield chunks.event(choices)
    if req.include_usage:
        yield sse.event(dict(head, choices=[], usage=sse.usage(sum(map(len, prompts)), completion_tokens)))
