"""The periodic engine line in the log, as vLLM prints it (off with --disable-log-stats).

Every interval, while anything happened, one INFO line: prompt and generation throughput over the
interval, running and waiting requests, KV-cache usage and the prefix-cache hit rate - what an operator
tails to see whether a server is busy, queueing or starved, without a Prometheus.
"""
from __future__ import annotations

import asyncio
import logging
import time

from mini_vllm.api.state import ServerState

log = logging.getLogger("mini_vllm.stats")


def stats_line(prev: tuple[float, int, int, int, int], now: tuple[float, int, int, int, int],
               running: int, waiting: int, kv_usage: float) -> str:
    """(time, prompt tokens, generation tokens, prefix queries, prefix hits) at two moments -> the line."""
    dt = max(now[0] - prev[0], 1e-9)
    queries, hits = now[3] - prev[3], now[4] - prev[4]
    rate = f"{100 * hits / queries:.1f}%" if queries else "n/a"
    return (f"Avg prompt throughput: {(now[1] - prev[1]) / dt:.1f} tokens/s, "
            f"Avg generation throughput: {(now[2] - prev[2]) / dt:.1f} tokens/s, Running: {running} reqs, "
            f"Waiting: {waiting} reqs, KV cache usage: {100 * kv_usage:.1f}%, Prefix cache hit rate: {rate}")


async def log_stats_forever(state: ServerState, interval_s: float) -> None:
    prev = None
    while True:
        await asyncio.sleep(interval_s)
        if state.engine is None:
            continue
        s = state.engine.stats()
        now = (time.monotonic(), s.prompt_tokens_total, s.generation_tokens_total, s.prefix_cache_queries,
               s.prefix_cache_hits)
        busy = s.num_requests_running or s.num_requests_waiting
        if prev is not None and (busy or now[1:3] != prev[1:3]):
            log.info("%s", stats_line(prev, now, s.num_requests_running, s.num_requests_waiting, s.kv_cache_usage))
        prev = now
