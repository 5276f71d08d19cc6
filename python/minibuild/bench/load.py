"""Streaming load over the OpenAI API: one *level* = N requests kept C at a time in flight.

Why its own module: `invoke bench`, bench/bench_http.py and the device benchmarks all measure the
same things (TTFT, inter-token latency, end-to-end latency, output tok/s, errors) and must measure them
the same way, or their numbers cannot be put side by side. Only httpx and the standard library: it
runs on the device machine too.

Definitions (as vLLM's `bench serve`): TTFT = request sent -> first content event; ITL = gap between
content events; TPOT = (e2e - TTFT) / (output tokens - 1), the per-token decode time even when one
SSE event carries several tokens; e2e = request sent -> stream closed. Output tok/s = the level's
completion tokens (from `usage`) / the level's wall time. Prompts are random token ids, fresh per
request, so a prefix cache cannot make one level look faster than the next.
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Awaitable, Callable

import httpx


@dataclass(frozen=True)
class Workload:
    """What every request of a level asks for."""
    input_len: int = 128
    output_len: int = 128
    model: str = ""                     # "" = the first id of /v1/models
    temperature: float = 0.0
    ignore_eos: bool = True             # vLLM's extension: exactly output_len tokens per request
    id_range: tuple[int, int] = (10, 800)   # prompt token ids are drawn from here (ordinary BPE ids)
    seed: int = 0
    timeout_s: float = 600.0
    api_key: str | None = None


@dataclass
class RequestResult:
    ok: bool
    e2e: float
    ttft: float | None = None
    output_tokens: int = 0
    prompt_tokens: int | None = None
    events: int = 0
    gaps: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


@dataclass
class LevelResult:
    """One (server, concurrency) row. Latencies in milliseconds."""
    label: str
    concurrency: int
    input_len: int
    output_len: int
    requests: int
    errors: int
    wall_s: float
    output_tokens: int
    output_tok_s: float
    request_s: float
    ttft_ms: dict[str, float]
    itl_ms: dict[str, float]
    tpot_ms: dict[str, float]
    e2e_ms: dict[str, float]
    tokens_per_event: float
    first_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def flat(self) -> dict[str, Any]:
        """One-level keys as bench/device_http_load.py records them (ttft_ms_p50, itl_ms_p99, ...)."""
        out: dict[str, Any] = {"concurrency": self.concurrency, "in": self.input_len, "out": self.output_len,
                               "output_tok_s": self.output_tok_s, "wall_s": self.wall_s, "errors": self.errors,
                               "tokens_per_event": self.tokens_per_event}
        for name in ("ttft", "itl", "tpot", "e2e"):
            for q in ("p50", "p99"):
                out[f"{name}_ms_{q}"] = getattr(self, f"{name}_ms")[q]
        return out


def percentiles(xs: list[float], scale: float = 1e3) -> dict[str, float]:
    """p50/p90/p99 and mean (nearest rank), scaled (seconds -> ms by default); NaN when empty."""
    if not xs:
        return {k: float("nan") for k in ("p50", "p90", "p99", "mean")}
    s = sorted(xs)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))] * scale  # noqa: E731
    return {"p50": pick(.5), "p90": pick(.9), "p99": pick(.99), "mean": sum(s) / len(s) * scale}


def prompts(w: Workload, concurrency: int, n: int) -> list[list[int]]:
    """n random token-id prompts of w.input_len, different per level and per request."""
    rng = random.Random(w.seed * 1_000_003 + concurrency * 7919 + w.input_len)
    lo, hi = w.id_range
    return [[rng.randrange(lo, hi) for _ in range(w.input_len)] for _ in range(n)]


def _headers(w: Workload) -> dict[str, str]:
    return {"Authorization": f"Bearer {w.api_key}"} if w.api_key else {}


def _carries_tokens(chunk: dict[str, Any]) -> bool:
    """A chunk with generated tokens: not a usage-only chunk, not a bare finish marker without text."""
    return any(c.get("text") or c.get("finish_reason") is None for c in chunk.get("choices") or [])


async def one_request(client: httpx.AsyncClient, url: str, w: Workload, prompt: list[int]) -> RequestResult:
    """One streamed /v1/completions request, timed on the client."""
    body = {"model": w.model, "prompt": prompt, "max_tokens": w.output_len, "temperature": w.temperature,
            "stream": True, "stream_options": {"include_usage": True}}
    if w.ignore_eos:
        body["ignore_eos"] = True
    t0 = time.perf_counter()
    res = RequestResult(ok=False, e2e=0.0)
    last = None
    try:
        async with client.stream("POST", url.rstrip("/") + "/v1/completions", json=body, headers=_headers(w)) as r:
            if r.status_code != 200:
                text = (await r.aread()).decode(errors="replace")
                res.error = f"HTTP {r.status_code}: {text[:200]}"
                res.e2e = time.perf_counter() - t0
                return res
            buf = b""
            async for piece in r.aiter_bytes():
                buf += piece
                *lines, buf = buf.split(b"\n")     # SSE lines end in \n: never split on unicode line breaks
                for raw in lines:
                    if not raw.startswith(b"data: ") or raw.strip() == b"data: [DONE]":
                        continue
                    now = time.perf_counter()
                    chunk = json.loads(raw[6:])
                    if chunk.get("usage"):
                        res.output_tokens = int(chunk["usage"].get("completion_tokens") or 0)
                        res.prompt_tokens = chunk["usage"].get("prompt_tokens")
                    if not _carries_tokens(chunk):
                        continue
                    res.events += 1
                    if res.ttft is None:
                        res.ttft = now - t0
                    elif last is not None:
                        res.gaps.append(now - last)
                    last = now
    except (httpx.HTTPError, json.JSONDecodeError, OSError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"[:200]
        res.e2e = time.perf_counter() - t0
        return res
    res.e2e = time.perf_counter() - t0
    if not res.output_tokens:           # a server without usage in streams: count events instead
        res.output_tokens = res.events
    if res.ttft is None:
        res.error = "the stream carried no tokens"
    elif w.ignore_eos and res.output_tokens != w.output_len:
        res.error = f"asked for {w.output_len} tokens (ignore_eos), usage says {res.output_tokens}"
    res.ok = res.error is None
    return res


async def closed_loop(send: Callable[[list[int]], Awaitable[RequestResult]], prompt_list: list[list[int]],
                      concurrency: int, on_done: Callable[[RequestResult], None] | None = None
                      ) -> tuple[list[RequestResult], float]:
    """Send every prompt, at most `concurrency` in flight (a slot takes the next prompt as soon as its
    request ends); returns the results and the wall time. Any request path works: HTTP here, the
    in-process engine in bench/bench_http.py."""
    todo = list(reversed(prompt_list))
    results: list[RequestResult] = []

    async def slot() -> None:
        while todo:
            r = await send(todo.pop())
            results.append(r)
            if on_done:
                on_done(r)
    t0 = time.perf_counter()
    await asyncio.gather(*(slot() for _ in range(min(concurrency, len(prompt_list)))))
    return results, time.perf_counter() - t0


async def measure(url: str, w: Workload, concurrency: int, requests: int,
                  on_done: Callable[[RequestResult], None] | None = None) -> tuple[list[RequestResult], float]:
    """`requests` streamed requests through `concurrency` slots (closed loop): (results, wall seconds)."""
    limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)
    async with httpx.AsyncClient(timeout=httpx.Timeout(w.timeout_s, connect=30), limits=limits) as client:
        return await closed_loop(lambda p: one_request(client, url, w, p), prompts(w, concurrency, requests),
                                 concurrency, on_done)


async def run_level_async(url: str, w: Workload, concurrency: int, requests: int, label: str = "",
                          on_done: Callable[[RequestResult], None] | None = None) -> LevelResult:
    """One level's row (see `measure`)."""
    results, wall = await measure(url, w, concurrency, requests, on_done)
    return summarize(label, w, concurrency, results, wall)


def run_level(url: str, w: Workload, concurrency: int, requests: int | None = None, label: str = "",
              on_done: Callable[[RequestResult], None] | None = None) -> LevelResult:
    """Synchronous entry point (the device benchmarks call this): requests default to one per slot."""
    return asyncio.run(run_level_async(url, w, concurrency, requests or concurrency, label, on_done))


def summarize(label: str, w: Workload, concurrency: int, results: list[RequestResult], wall: float) -> LevelResult:
    ok = [r for r in results if r.ok]
    tokens = sum(r.output_tokens for r in ok)
    events = sum(r.events for r in ok)
    errors = [r for r in results if not r.ok]
    return LevelResult(
        label=label, concurrency=concurrency, input_len=w.input_len, output_len=w.output_len,
        requests=len(results), errors=len(errors), wall_s=wall, output_tokens=tokens,
        output_tok_s=tokens / wall if wall > 0 else 0.0, request_s=len(ok) / wall if wall > 0 else 0.0,
        ttft_ms=percentiles([r.ttft for r in ok if r.ttft is not None]),
        itl_ms=percentiles([g for r in ok for g in r.gaps]),
        tpot_ms=percentiles([t for r in ok if (t := r.tpot) is not None]),
        e2e_ms=percentiles([r.e2e for r in ok]),
        tokens_per_event=tokens / events if events else 0.0,
        first_error=errors[0].error if errors else None)


def served_model(url: str, api_key: str | None = None, timeout_s: float = 30.0) -> str:
    """The first model id a server lists (what requests name when --model is not given)."""
    try:
        r = httpx.get(url.rstrip("/") + "/v1/models", headers=_headers(Workload(api_key=api_key)), timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise BenchError(f"{url}: cannot reach /v1/models ({type(exc).__name__}: {exc}); is the server up?") from exc
    if r.status_code != 200:
        raise BenchError(f"{url}/v1/models answered HTTP {r.status_code}: {r.text[:200]}"
                         + (" (pass --api-key or set MINI_VLLM_API_KEY)" if r.status_code == 401 else ""))
    data = r.json().get("data") or []
    if not data:
        raise BenchError(f"{url}/v1/models lists no model")
    return str(data[0]["id"])


class BenchError(RuntimeError):
    """The benchmark cannot run; the message says why and what to do."""
