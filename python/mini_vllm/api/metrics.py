"""/metrics with vLLM's metric names - today's and the older ones - so dashboards and routers work unchanged.

Exposed through `prometheus_client` (its exposition writer, counters with `_total`, histograms with
`_bucket{le}`, `_sum`, `_count`; no `_created` series, as vLLM). Labels: `model_name` (the served name) and
`engine` ("0"), as vLLM sets them. Gauges and engine-wide counters are read from the engine's `stats()` at
scrape time (the engine owns them); per-request numbers are recorded here as requests finish. Both the
current names and the older ones the production stack's router and dashboards read are emitted:
`kv_cache_usage_perc` + `gpu_cache_usage_perc`, `prefix_cache_*` + `gpu_prefix_cache_*`,
`inter_token_latency_seconds` + `time_per_output_token_seconds`.

Histograms are our own bucket counters exported as prometheus_client metric families: a client that
receives several tokens at once (a coalesced stream event) records them with one call, and the hot
per-token path costs one bisect instead of prometheus_client's per-observation lock and bucket scan.
"""
from __future__ import annotations

import bisect
import threading
from collections import Counter
from typing import TYPE_CHECKING, Any, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from mini_vllm.api.engine_client import EngineClient
    from mini_vllm.engine.outputs import RequestOutput

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LABELS = ("model_name", "engine")

# vLLM's bucket boundaries, kept so that histogram_quantile() queries compare across servers
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                   240.0, 480.0, 960.0, 1920.0, 7680.0)
N_BUCKETS = (1, 2, 5, 10, 20)
FINISHED_REASONS = ("stop", "length", "abort", "error")

# (metric, help, buckets: "ttft" | "itl" | "request" | "tokens" | "n")
HISTOGRAMS = (
    ("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", "ttft"),
    ("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", "itl"),
    ("vllm:time_per_output_token_seconds",
     "Histogram of time per output token in seconds (older name of inter_token_latency).", "itl"),
    ("vllm:request_time_per_output_token_seconds",
     "Histogram of time_per_output_token_seconds per request (decode time / tokens after the first).", "itl"),
    ("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", "request"),
    ("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", "request"),
    ("vllm:request_inference_time_seconds", "Histogram of time spent in RUNNING phase for request.", "request"),
    ("vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.", "request"),
    ("vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.", "request"),
    ("vllm:request_prompt_tokens", "Number of prefill tokens processed.", "tokens"),
    ("vllm:request_generation_tokens", "Number of generation tokens processed.", "tokens"),
    ("vllm:request_max_num_generation_tokens", "Histogram of maximum number of requested generation tokens.",
     "tokens"),
    ("vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.", "tokens"),
    ("vllm:request_params_n", "Histogram of the n request parameter.", "n"),
)

# (metric, EngineStats field, kind, help): read from the engine at scrape time
ENGINE_METRICS = (
    ("vllm:num_requests_running", "num_requests_running", "gauge", "Number of requests in model execution batches."),
    ("vllm:num_requests_waiting", "num_requests_waiting", "gauge", "Number of requests waiting to be processed."),
    ("vllm:kv_cache_usage_perc", "kv_cache_usage", "gauge", "KV-cache usage. 1 means 100 percent usage."),
    ("vllm:gpu_cache_usage_perc", "kv_cache_usage", "gauge",
     "GPU KV-cache usage. 1 means 100 percent usage (older name of kv_cache_usage_perc)."),
    ("vllm:prefix_cache_queries", "prefix_cache_queries", "counter", "Prefix cache queries, in terms of number of queried tokens."),
    ("vllm:prefix_cache_hits", "prefix_cache_hits", "counter", "Prefix cache hits, in terms of number of cached tokens."),
    ("vllm:gpu_prefix_cache_queries", "prefix_cache_queries", "counter",
     "GPU prefix cache queries, in terms of number of queried tokens (older name)."),
    ("vllm:gpu_prefix_cache_hits", "prefix_cache_hits", "counter",
     "GPU prefix cache hits, in terms of number of cached tokens (older name)."),
    ("vllm:num_preemptions", "num_preemptions", "counter", "Cumulative number of preemption from the engine."),
    ("vllm:prompt_tokens", "prompt_tokens_total", "counter", "Number of prefill tokens processed."),
    ("vllm:generation_tokens", "generation_tokens_total", "counter", "Number of generation tokens processed."),
)


def one_two_five(limit: int) -> tuple[int, ...]:
    """1, 2, 5, 10, 20, 50, ... up to `limit` (vLLM's buckets for token counts)."""
    out, mag = [], 1
    while True:
        for m in (1, 2, 5):
            if m * mag > limit:
                return tuple(out)
            out.append(m * mag)
        mag *= 10


class Buckets:
    """A histogram's counts: one bisect per observation; `n` equal observations in one call."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)      # last: above every bound (+Inf only)
        self.sum = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += n
        self.sum += value * n

    def family(self, name: str, doc: str, labels: list[str]) -> HistogramMetricFamily:
        return histogram_family(name, doc, labels, self.bounds, self.counts, self.sum)


def histogram_family(name: str, doc: str, labels: list[str], bounds: Iterable[float], counts: Iterable[int],
                     total: float) -> HistogramMetricFamily:
    cum, rows = 0, []
    counts = list(counts)
    for bound, count in zip(bounds, counts):
        cum += count
        rows.append((floatToGoString(bound), cum))
    rows.append(("+Inf", cum + (counts[-1] if counts else 0)))
    fam = HistogramMetricFamily(name, doc, labels=list(LABELS))
    fam.add_metric(labels, rows, total)
    return fam


class ServerMetrics:
    """Per-request observations plus a prometheus_client collector that merges in the engine's own counters."""

    def __init__(self, model_name: str, engine: str = "0", max_model_len: int = 131072) -> None:
        self.labels = [model_name, engine]
        self._lock = threading.Lock()
        self._engine: EngineClient | None = None
        self.success: Counter[str] = Counter()
        self._bounds = {"ttft": TTFT_BUCKETS, "itl": ITL_BUCKETS, "request": REQUEST_BUCKETS, "n": N_BUCKETS,
                        "tokens": one_two_five(max_model_len)}
        self.hist = {name: Buckets(self._bounds[kind]) for name, _, kind in HISTOGRAMS}
        self._ttft = self.hist["vllm:time_to_first_token_seconds"]
        self._itl = (self.hist["vllm:inter_token_latency_seconds"], self.hist["vllm:time_per_output_token_seconds"])
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def bind(self, engine: "EngineClient") -> None:
        """The loaded engine: its stats are read at scrape time; token buckets follow its max_model_len."""
        self._engine = engine
        bounds = one_two_five(int(engine.model_config.max_model_len))
        with self._lock:
            for name, _, kind in HISTOGRAMS:
                if kind == "tokens":
                    self.hist[name] = Buckets(bounds)

    # ---- observations (the HTTP layer) ---------------------------------------------------------
    def observe_first_token(self, seconds: float) -> None:
        with self._lock:
            self._ttft.observe(seconds)

    def observe_inter_token(self, seconds: float, tokens: int = 1) -> None:
        """`tokens` arrived together after `seconds`: recorded as that many gaps of seconds/tokens."""
        gap = seconds / tokens
        with self._lock:
            for h in self._itl:
                h.observe(gap, tokens)

    def observe_finished(self, finished_reason: str, e2e_seconds: float, out: "RequestOutput | None" = None,
                         max_tokens: int | None = None, n: int = 1) -> None:
        """A request ended (any reason); `out` is its last RequestOutput when the engine produced one."""
        with self._lock:
            self.success[finished_reason] += 1
            self.hist["vllm:e2e_request_latency_seconds"].observe(e2e_seconds)
            self.hist["vllm:request_params_n"].observe(n)
            if max_tokens is not None:
                self.hist["vllm:request_params_max_tokens"].observe(max_tokens)
            if out is not None:
                self._observe_phases(out)

    def _observe_phases(self, out: "RequestOutput") -> None:
        h = self.hist
        h["vllm:request_prompt_tokens"].observe(len(out.prompt_token_ids))
        gen = [len(o.token_ids) for o in out.outputs]
        h["vllm:request_generation_tokens"].observe(sum(gen))
        h["vllm:request_max_num_generation_tokens"].observe(max(gen, default=0))
        t = out.metrics
        arrival, sched, first, end = t.get("arrival"), t.get("scheduled"), t.get("first_token"), t.get("finished")
        if arrival is not None and sched is not None:
            h["vllm:request_queue_time_seconds"].observe(max(0.0, sched - arrival))
        if sched is not None and end is not None:
            h["vllm:request_inference_time_seconds"].observe(max(0.0, end - sched))
        if sched is not None and first is not None:
            h["vllm:request_prefill_time_seconds"].observe(max(0.0, first - sched))
        if first is not None and end is not None:
            decode = max(0.0, end - first)
            h["vllm:request_decode_time_seconds"].observe(decode)
            if max(gen, default=0) > 1:
                h["vllm:request_time_per_output_token_seconds"].observe(decode / (max(gen) - 1))

    # ---- exposition ----------------------------------------------------------------------------
    def collect(self) -> Iterable[Metric]:
        """prometheus_client's collector protocol: every family, engine numbers read now."""
        eng = self._engine
        stats: Any = eng.stats() if eng is not None else None
        labels = self.labels
        for name, field, kind, doc in ENGINE_METRICS:
            value = float(getattr(stats, field, 0) or 0)
            fam = (GaugeMetricFamily if kind == "gauge" else CounterMetricFamily)(name, doc, labels=list(LABELS))
            fam.add_metric(labels, value)
            yield fam
        buckets = getattr(stats, "iteration_token_buckets", ())
        yield histogram_family("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.",
                               labels, buckets, getattr(stats, "iteration_token_counts", ()) or [0] * (len(buckets) + 1),
                               float(getattr(stats, "iteration_tokens_sum", 0)))
        if eng is not None:
            yield self._cache_config_info(eng)
        with self._lock:
            fam = CounterMetricFamily("vllm:request_success", "Count of successfully processed requests.",
                                      labels=[*LABELS, "finished_reason"])
            for reason in sorted(set(self.success) | set(FINISHED_REASONS)):
                fam.add_metric([*labels, reason], float(self.success[reason]))
            yield fam
            for name, doc, _ in HISTOGRAMS:
                yield self.hist[name].family(name, doc, labels)

    def _cache_config_info(self, eng: "EngineClient") -> GaugeMetricFamily:
        mc: Any = eng.model_config
        info = {"block_size": str(getattr(mc, "block_size", "")), "num_gpu_blocks": str(getattr(mc, "num_kv_blocks", "")),
                "cache_dtype": "auto"}
        fam = GaugeMetricFamily("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
                                labels=[*LABELS, *info])
        fam.add_metric([*self.labels, *info.values()], 1.0)
        return fam

    def render(self) -> bytes:
        """The /metrics body."""
        return generate_latest(self.registry)
