"""The load library's arithmetic: percentiles, TPOT, throughput, token-carrying chunks, prompt freshness."""
from __future__ import annotations

import math

from minibuild.bench.load import RequestResult, Workload, _carries_tokens, percentiles, prompts, summarize


def test_percentiles_nearest_rank_in_ms():
    p = percentiles([i / 1000 for i in range(1, 101)])
    assert [round(p[k], 9) for k in ("p50", "p90", "p99", "mean")] == [51.0, 91.0, 100.0, 50.5]
    assert all(math.isnan(v) for v in percentiles([]).values())


def test_summary_counts_only_successful_requests():
    ok = RequestResult(ok=True, e2e=1.0, ttft=0.2, output_tokens=9, events=3, gaps=[0.3, 0.5])
    bad = RequestResult(ok=False, e2e=0.1, error="HTTP 400: bad")
    r = summarize("A", Workload(output_len=9), 2, [ok, bad], 2.0)
    assert (r.requests, r.errors, r.output_tokens, r.first_error) == (2, 1, 9, "HTTP 400: bad")
    assert r.output_tok_s == 4.5 and r.request_s == 0.5 and r.tokens_per_event == 3.0
    assert math.isclose(r.tpot_ms["p50"], 100.0)          # (1.0 - 0.2) / (9 - 1), even with 3 tokens per event
    assert r.flat()["ttft_ms_p50"] == 200.0


def test_usage_only_and_bare_finish_chunks_carry_no_tokens():
    assert _carries_tokens({"choices": [{"text": "a", "finish_reason": None}]})
    assert _carries_tokens({"choices": [{"text": "", "finish_reason": None}]})     # a token that decodes to ""
    assert not _carries_tokens({"choices": [], "usage": {"completion_tokens": 3}})
    assert not _carries_tokens({"choices": [{"text": "", "finish_reason": "length"}]})


def test_prompts_are_fresh_per_request_and_level_but_reproducible():
    w = Workload(input_len=16)
    a, b = prompts(w, 8, 4), prompts(w, 8, 4)
    assert a == b and len({tuple(p) for p in a}) == 4 and all(len(p) == 16 for p in a)
    assert prompts(w, 16, 4)[0] != a[0]
