"""Prometheus text exposition with vLLM's metric names, so existing dashboards and routers work.

Gauges and engine-wide counters are read from `engine.stats()` at scrape time (the engine owns
them); per-request latencies and outcomes are recorded here by the HTTP layer as requests finish.
Names follow vLLM 0.x's `prometheus_client` output: counters carry `_total` in both the sample and
the TYPE line, histograms export `_bucket{le=...}`, `_sum`, `_count`. Labels: model_name, engine.
Hand-written (~100 lines) rather than a dependency: the format is tiny and fixed.
"""
from __future__ import annotations

import bisect
import threading
from collections import Counter
from typing import Any

# vLLM's bucket boundaries (seconds), kept so that histogram_quantile() queries compare across servers.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)

# (metric, EngineStats field, type, help)
ENGINE_METRICS = (
    ("vllm:num_requests_running", "num_requests_running", "gauge", "Number of requests in model execution batches."),
    ("vllm:num_requests_waiting", "num_requests_waiting", "gauge", "Number of requests waiting to be processed."),
    ("vllm:kv_cache_usage_perc", "kv_cache_usage", "gauge", "KV-cache usage. 1 means 100 percent usage."),
    ("vllm:prefix_cache_queries", "prefix_cache_queries", "counter", "Prefix cache queries, in tokens."),
    ("vllm:prefix_cache_hits", "prefix_cache_hits", "counter", "Prefix cache hits, in tokens."),
    ("vllm:num_preemptions", "num_preemptions", "counter", "Cumulative number of preemptions."),
    ("vllm:prompt_tokens", "prompt_tokens_total", "counter", "Number of prefill tokens processed."),
    ("vllm:generation_tokens", "generation_tokens_total", "counter", "Number of generation tokens processed."),
)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # last: +Inf only
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def lines(self, name: str, labels: str) -> list[str]:
        out, cum = [], 0
        for bound, count in zip(self.buckets, self.counts):
            cum += count
            out.append(f'{name}_bucket{{{labels},le="{bound}"}} {cum}')
        cum += self.counts[-1]
        out.append(f'{name}_bucket{{{labels},le="+Inf"}} {cum}')
        out.append(f"{name}_sum{{{labels}}} {self.sum}")
        out.append(f"{name}_count{{{labels}}} {cum}")
        return out


class ServerMetrics:
    """Per-request observations plus a renderer that merges in the engine's own counters."""

    def __init__(self, model_name: str, engine: str = "0") -> None:
        self.labels = f'model_name="{_escape(model_name)}",engine="{engine}"'
        self._lock = threading.Lock()
        self.success: Counter[str] = Counter()
        self.ttft = Histogram(TTFT_BUCKETS)
        self.itl = Histogram(ITL_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)

    def observe_first_token(self, seconds: float) -> None:
        with self._lock:
            self.ttft.observe(seconds)

    def observe_inter_token(self, seconds: float, tokens: int = 1) -> None:
        """`tokens` arrived together after `seconds`: recorded as that many gaps of seconds/tokens."""
        with self._lock:
            for _ in range(tokens):
                self.itl.observe(seconds / tokens)

    def observe_finished(self, finished_reason: str, e2e_seconds: float) -> None:
        with self._lock:
            self.success[finished_reason] += 1
            self.e2e.observe(e2e_seconds)

    def render(self, stats: Any | None) -> str:
        """The /metrics body; `stats` is the engine's EngineStats (None while loading: zeros)."""
        lines: list[str] = []
        for name, field, kind, help_ in ENGINE_METRICS:
            value = float(getattr(stats, field, 0) or 0) if stats is not None else 0.0
            sample = f"{name}_total" if kind == "counter" else name
            lines += [f"# HELP {sample} {help_}", f"# TYPE {sample} {kind}", f"{sample}{{{self.labels}}} {value}"]
        with self._lock:
            lines += ["# HELP vllm:request_success_total Count of successfully processed requests.",
                      "# TYPE vllm:request_success_total counter"]
            for reason in sorted(set(self.success) | {"stop", "length", "abort"}):
                lines.append(f'vllm:request_success_total{{{self.labels},finished_reason="{reason}"}} '
                             f"{float(self.success[reason])}")
            for name, hist, help_ in (
                    ("vllm:time_to_first_token_seconds", self.ttft, "Histogram of time to first token in seconds."),
                    ("vllm:inter_token_latency_seconds", self.itl, "Histogram of inter-token latency in seconds."),
                    ("vllm:e2e_request_latency_seconds", self.e2e, "Histogram of e2e request latency in seconds.")):
                lines += [f"# HELP {name} {help_}", f"# TYPE {name} histogram"] + hist.lines(name, self.labels)
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
