"""Driving one engine request from an HTTP handler: limits, refusals, aborts, metrics.

Shared by completions and chat so that both map engine refusals the same way (prompt too long ->
400, queue full -> 429, engine dead -> 503; as the HTTP status, streaming too, because a request is
answered only once the engine accepted it), free the request's KV blocks the moment the client goes away (abort on
cancellation), and record TTFT / inter-token latency / e2e latency / outcome exactly once.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator, Awaitable, TypeVar

from fastapi import Request

from mini_vllm.api.engine_client import EngineClient
from mini_vllm.api.errors import APIError
from mini_vllm.api.schemas import _Sampling
from mini_vllm.engine.outputs import RequestOutput
from mini_vllm.api.metrics import ServerMetrics
from mini_vllm.api.state import ServerState
from mini_vllm.sampling_params import SamplingParams

T = TypeVar("T")


class _RequestLog:
    """--enable-log-requests: one INFO line per request (id, prompt length, sampling settings)."""

    def __init__(self) -> None:
        self.enabled = False
        self._log = logging.getLogger("mini_vllm.requests")

    def info(self, *args: object) -> None:
        self._log.info(*args)


log_requests = _RequestLog()


def sampling_params(req: _Sampling, state: ServerState, max_tokens: int | None, logprobs: int | None,
                    stop_token_ids: list[int] = (), logprobs_param: str = "logprobs") -> SamplingParams:
    """The request's sampling settings; what it leaves unset comes from the model's generation config
    (--generation-config auto), else OpenAI's defaults."""
    if logprobs is not None and logprobs > state.max_logprobs:
        raise APIError(400, f"{logprobs_param} {logprobs} is more than the server's --max-logprobs "
                       f"{state.max_logprobs}", logprobs_param)
    d = state.sampling_defaults

    def pick(value, name: str, default):
        return value if value is not None else d.get(name, default)

    params = SamplingParams(
        n=req.n, temperature=pick(req.temperature, "temperature", 1.0), top_p=pick(req.top_p, "top_p", 1.0),
        top_k=pick(req.top_k, "top_k", 0) or 0, min_p=pick(req.min_p, "min_p", 0.0) or 0.0,
        seed=req.seed, max_tokens=max_tokens if max_tokens is not None else d.get("max_tokens"),
        stop=list(req.stop or []),
        stop_token_ids=list(req.stop_token_ids or []) + [i for i in stop_token_ids if i not in (req.stop_token_ids or [])],
        ignore_eos=req.ignore_eos, logprobs=logprobs, logit_bias=req.logit_bias or None)
    try:
        params.validate()
    except ValueError as e:
        raise APIError(400, str(e), str(e).split()[0]) from None
    return params


def check_length(prompt_len: int, max_tokens: int | None, max_model_len: int, param: str) -> None:
    if prompt_len >= max_model_len:
        raise APIError(400, f"This model's maximum context length is {max_model_len} tokens. However, your "
                       f"prompt has {prompt_len} tokens.", param)
    if max_tokens is not None and prompt_len + max_tokens > max_model_len:
        raise APIError(400, f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                       f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} for the "
                       "completion). Please reduce the prompt or max_tokens.", "max_tokens")


def _engine_errors() -> tuple[type[BaseException], type[BaseException]]:
    """The engine's refusal exceptions (imported late: the engine module pulls in torch, and the HTTP
    server must answer /health before that import finishes)."""
    from mini_vllm.engine.async_engine import EngineDeadError, QueueFullError
    return QueueFullError, EngineDeadError


async def _run(engine: EngineClient, metrics: ServerMetrics, request_id: str, prompt_ids: list[int],
               params: SamplingParams) -> AsyncIterator[RequestOutput]:
    """engine.generate with our error mapping and metrics; aborts the request if the consumer stops early."""
    queue_full, dead = _engine_errors()
    if log_requests.enabled:
        log_requests.info("request %s: %d prompt tokens, %s", request_id, len(prompt_ids), params)
    start = time.monotonic()
    last = None
    finished = refused = False
    try:
        async for out in engine.generate(request_id, prompt_ids, params):
            now = time.monotonic()
            new = len(out.outputs[0].token_ids_delta) if out.outputs else 0
            if new:
                if last is None:
                    metrics.observe_first_token(now - start)
                    if new > 1:
                        metrics.observe_inter_token(0.0, new - 1)
                else:
                    metrics.observe_inter_token(now - last, new)
                last = now
            if out.finished:
                finished = True
                reason = (out.outputs[0].finish_reason or "stop") if out.outputs else "stop"
                metrics.observe_finished(reason, now - start, out, params.max_tokens, params.n)
            yield out
    except ValueError as e:
        if last is not None:
            raise
        refused = True
        raise APIError(400, str(e), "logit_bias" if str(e).startswith("logit_bias") else "prompt") from None
    except queue_full as e:
        refused = True
        raise APIError(429, f"server busy: {e}", code="queue_full") from None
    except dead as e:
        refused = True
        raise APIError(503, str(e), code="engine_dead") from None
    finally:
        if not finished and not refused:
            engine.abort(request_id)
            metrics.observe_finished("abort", time.monotonic() - start, None, params.max_tokens, params.n)


async def start_request(state: ServerState, request_id: str, prompt_ids: list[int],
                        params: SamplingParams) -> AsyncIterator[RequestOutput]:
    """Submit a request and wait for its first output; returns the stream of all its outputs.

    Waiting here (before any response bytes are sent) is what lets the engine's refusals - prompt too
    long (400), queue full (429), engine dead (503) - reach a *streaming* client as the HTTP status
    instead of an error event inside a 200 response.
    """
    stream = _run(state.require_engine(), state.metrics, request_id, prompt_ids, params)
    try:
        first = await stream.__anext__()
    except BaseException:
        await stream.aclose()
        raise
    return _chain(first, stream)


async def start_all(state: ServerState, requests: list[tuple[str, list[int]]],
                    params: SamplingParams) -> list[AsyncIterator[RequestOutput]]:
    """start_request for several prompts at once; if any is refused, the others are aborted."""
    results = await asyncio.gather(*(start_request(state, rid, ids, params) for rid, ids in requests),
                                   return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        for r in results:
            if not isinstance(r, BaseException):
                await r.aclose()  # type: ignore[attr-defined]
        raise errors[0]
    return results  # type: ignore[return-value]


async def _chain(first: T, rest: AsyncIterator[T]) -> AsyncIterator[T]:
    try:
        yield first
        async for item in rest:
            yield item
    finally:
        await rest.aclose()  # type: ignore[attr-defined]


async def until_disconnect(request: Request, work: Awaitable[T], poll_s: float = 0.25) -> T:
    """Await `work`, cancelling it (which aborts its engine request) if the HTTP client goes away."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise APIError(499, "client disconnected")
    finally:
        if not task.done():
            task.cancel()


async def merged(streams: list[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Interleave several async iterators (one per prompt) as they produce; close them all on exit."""
    if len(streams) == 1:
        try:
            async for item in streams[0]:
                yield 0, item
        finally:
            await streams[0].aclose()  # type: ignore[attr-defined]
        return
    queue: asyncio.Queue[tuple[int, Any, BaseException | None, bool]] = asyncio.Queue()

    async def pump(i: int, it: AsyncIterator[T]) -> None:
        try:
            async for item in it:
                await queue.put((i, item, None, False))
            await queue.put((i, None, None, True))
        except BaseException as e:  # noqa: BLE001 - forwarded to the consumer
            await queue.put((i, None, e, True))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            i, item, err, done = await queue.get()
            if err is not None:
                raise err
            if done:
                remaining -= 1
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

