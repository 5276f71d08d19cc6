"""A real Prometheus (Debian's binary) scrapes a live `mini-vllm serve` and answers PromQL on every name.

The names are the issue's list - today's vLLM names and the older ones the production stack's router and
dashboards read - written out here (not taken from the server's own tables), so dropping one fails.
"""
from __future__ import annotations

import math

import pytest

from prometheus_server import prometheus

from api_helpers import MODEL, metric

GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
          "vllm:gpu_cache_usage_perc")
COUNTERS = ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_queries_total",
            "vllm:gpu_prefix_cache_hits_total", "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
            "vllm:num_preemptions_total", "vllm:request_success_total")
HISTOGRAMS = ("vllm:e2e_request_latency_seconds", "vllm:time_to_first_token_seconds",
              "vllm:time_per_output_token_seconds", "vllm:inter_token_latency_seconds",
              "vllm:request_time_per_output_token_seconds", "vllm:request_queue_time_seconds",
              "vllm:request_prefill_time_seconds", "vllm:request_decode_time_seconds",
              "vllm:request_inference_time_seconds", "vllm:request_prompt_tokens", "vllm:request_generation_tokens",
              "vllm:request_max_num_generation_tokens", "vllm:iteration_tokens_total")


@pytest.fixture(scope="module")
def prom(server, client, tmp_path_factory):
    for stream in (False, True):      # traffic first, so every histogram has observations
        r = client.completions.create(model=MODEL, prompt="Hello there", max_tokens=4, stream=stream,
                                      extra_body={"ignore_eos": True})
        if stream:
            list(r)
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    target = server.url.removeprefix("http://")
    with prometheus([target], tmp_path_factory.mktemp("prometheus")) as p:
        p.wait_for('up{job="mini-vllm"} == 1')
        yield p


def test_prometheus_scrapes_every_name_with_vllm_labels(prom, http):
    names = GAUGES + COUNTERS + tuple(f"{h}_{part}" for h in HISTOGRAMS for part in ("bucket", "sum", "count"))
    for name in names:
        res = prom.wait_for(name)
        assert all(labels["model_name"] == MODEL and labels["engine"] == "0" for labels, _ in res), (name, res)
    text = http.get("/metrics").text                  # nothing else runs now: Prometheus saw these numbers
    for name in ("vllm:generation_tokens_total", "vllm:prompt_tokens_total", "vllm:request_success_total"):
        got = prom.wait_for(f'sum({name}{{model_name="{MODEL}"}}) >= {metric(text, name)}')
        assert got[0][1] == metric(text, name), name
    for h in HISTOGRAMS:
        assert prom.value(f"sum({h}_count)") >= 1, h


def test_promql_over_our_histograms_and_old_names(prom):
    p50 = prom.value('histogram_quantile(0.5, sum by (le) (vllm:time_to_first_token_seconds_bucket))')
    assert p50 is not None and math.isfinite(p50) and p50 > 0
    # the older names carry the same series as today's (what old dashboards plot)
    assert prom.value("sum(vllm:gpu_cache_usage_perc)") == prom.value("sum(vllm:kv_cache_usage_perc)")
    assert prom.value("sum(vllm:time_per_output_token_seconds_count)") == \
        prom.value("sum(vllm:inter_token_latency_seconds_count)")
    finished = prom.query('vllm:request_success_total{finished_reason="length"}')
    assert finished and finished[0][1] >= 2          # the two ignore_eos completions
