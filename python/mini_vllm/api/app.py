"""The FastAPI application: routes, API-key check, body-size cap; and loading the model before it serves.

Load first, listen after: the CLI calls `load_model` before the socket is bound, so a model that cannot
load ends the process with a non-zero exit and one line saying why (a launcher, Slurm or Kubernetes sees
a failed start), and a port that answers always has a model behind it (/health 200). While loading,
orchestrators see "connection refused", which their probes and `invoke rollout`'s waiter treat as
"not up yet" while the process lives.
"""
from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import sys
import time
from contextlib import asynccontextmanager
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from mini_vllm import __version__
from mini_vllm.api import sse
from mini_vllm.api.chat import create_chat_completion
from mini_vllm.api.completions import create_completion
from mini_vllm.api.engine_client import EngineClient
from mini_vllm.api.errors import APIError, error_body, install_error_handlers
from mini_vllm.api.limits import DEFAULT_MAX_REQUEST_BYTES, BodyLimitMiddleware
from mini_vllm.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from mini_vllm.api.schemas import ChatCompletionRequest, CompletionRequest
from mini_vllm.api.state import ServerState
from mini_vllm.api.stats_log import log_stats_forever

log = logging.getLogger("mini_vllm.api")
OPEN_PATHS = frozenset({"/health", "/metrics", "/version", "/ping"})   # matched exactly, never by prefix


def set_switch_interval(ms: float | None) -> float:
    """Set the process's GIL switch interval (None: leave Python's 5 ms); returns the one in force, in s.

    The engine thread and the event loop share the GIL; bench/bench_api_overhead.py measured 5, 1 and
    0.5 ms alike at 256 streams with a simulated 20 ms GPU step, so the default is left alone; the
    knob (--switch-interval-ms) is for A/B runs."""
    if ms is not None:
        if not 0 < ms <= 1000:
            raise ValueError(f"switch interval {ms} ms: expected milliseconds in (0, 1000]")
        sys.setswitchinterval(ms / 1000)
    return sys.getswitchinterval()


class APIKeyMiddleware:
    """Bearer-token check for everything but the open paths (pure ASGI: no cost to streaming)."""

    def __init__(self, app: Any, api_key: str) -> None:
        self.app, self._expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):
                resp = JSONResponse(error_body(401, "invalid or missing API key", None, "invalid_api_key"), 401)
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)


def load_model(state: ServerState, load: Callable[[], EngineClient]) -> None:
    """Build and start the engine (`load()`) before the server listens; raises whatever the load raised."""
    t0 = time.monotonic()
    engine = load()
    state.load_seconds = time.monotonic() - t0
    # The start-up heap (torch, weights' wrappers, fastapi; ~276k objects) is never scanned again:
    # a full collection of it takes ~200 ms on the CPU box holding the GIL, stalling both threads
    # (bench/bench_engine_overhead.py --gc-freeze). --no-gc-freeze is the bench's peer.
    if state.gc_freeze:
        gc.collect()
        gc.freeze()
    state.engine = engine
    state.metrics.bind(engine)
    log.info("model %s ready in %.1f s (max_model_len %s)", state.model_name, state.load_seconds,
             getattr(engine.model_config, "max_model_len", "?"))


def build_app(state: ServerState, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> FastAPI:
    """The app for a loaded model (`load_model` first); the caller shuts the engine down after serving."""

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        state.created = sse.now()
        log.info("GIL switch interval %.2f ms", set_switch_interval(state.switch_interval_ms) * 1000)
        stats = asyncio.ensure_future(log_stats_forever(state, state.log_stats_interval_s)) \
            if state.log_stats_interval_s else None
        yield
        if stats is not None:
            stats.cancel()

    app = FastAPI(title="mini-vLLM", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_request_bytes)
    if state.api_key:       # added last: runs first, so an unauthenticated client cannot make us read a body
        app.add_middleware(APIKeyMiddleware, api_key=state.api_key)

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.engine is None or not state.engine.is_ready:
            return JSONResponse(error_body(503, "model is not ready"), 503)
        return JSONResponse({"status": "ok"})

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": __version__}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        cards = []
        for name in (state.model_name, *state.aliases):
            card: dict[str, Any] = {"id": name, "object": "model", "created": state.created,
                                    "owned_by": "mini-vllm", "root": state.model_name, "parent": None}
            if state.engine is not None:
                card["max_model_len"] = state.max_model_len
            cards.append(card)
        return {"object": "list", "data": cards}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, raw: Request):
        return await create_completion(req, raw, state)

    @app.post("/v1/chat/completions")
    async def chat(req: ChatCompletionRequest, raw: Request):
        return await create_chat_completion(req, raw, state)

    return app


__all__ = ["APIError", "ServerState", "build_app"]
