"""Pieces that need no server: the CLI's flag mapping and the metrics text format."""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from mini_vllm.cli import engine_args, parse_args
from mini_vllm.entrypoints.serve import api_key
from mini_vllm.environment import EnvError, env_defaults
from mini_vllm.api.metrics import ServerMetrics


def test_cli_flags_map_onto_engine_args(monkeypatch):
    ns = parse_args(["serve", "/models/gpt-oss-20b", "--tensor-parallel-size", "2", "--max-model-len", "8192",
                     "--no-enable-prefix-caching", "--kv-cache-memory-gb", "1.5", "--dtype", "bfloat16",
                     "--max-num-seqs", "64", "--block-size", "32", "--seed", "7", "--enforce-eager"])
    a = engine_args(ns)
    assert (a.model, a.served_model_name, a.tensor_parallel_size, a.max_model_len) == \
        ("/models/gpt-oss-20b", "gpt-oss-20b", 2, 8192)
    assert (a.enable_prefix_caching, a.kv_cache_memory_gb, a.dtype, a.max_num_seqs, a.block_size, a.seed,
            a.enforce_eager) == (False, 1.5, "bfloat16", 64, 32, 7, True)
    monkeypatch.delenv("MINI_VLLM_API_KEY", raising=False)
    monkeypatch.setenv("VLLM_API_KEY", "from-env")
    assert api_key(ns) == "from-env"
    assert api_key(parse_args(["serve", "m", "--api-key", "flag"])) == "flag"
    assert engine_args(parse_args(["serve", "m", "--served-model-name", "x"])).served_model_name == "x"


def test_environment_knobs_are_flag_defaults_and_flags_win(monkeypatch):
    """MINI_VLLM_* variables are read in one place (environment.py) as the CLI's defaults."""
    for var, value in (("MINI_VLLM_FUSED_OPS", "0"), ("MINI_VLLM_ATTENTION", "triton"),
                       ("MINI_VLLM_SWITCH_INTERVAL_MS", "0.5"), ("MINI_VLLM_DEQUANT_CACHE_MB", "0"),
                       ("MINI_VLLM_STREAM_COALESCE", "false")):
        monkeypatch.setenv(var, value)
    a = engine_args(parse_args(["serve", "m"]))
    assert (a.fused_ops, a.attention_backend, a.switch_interval_ms, a.dequant_cache_mb, a.stream_coalesce) == \
        (False, "triton", 0.5, 0, False)
    a = engine_args(parse_args(["serve", "m", "--fused-ops", "--attention-backend", "fa3", "--stream-coalesce"]))
    assert (a.fused_ops, a.attention_backend, a.stream_coalesce) == (True, "fa3", True)
    monkeypatch.setenv("MINI_VLLM_GC_FREEZE", "maybe")
    with pytest.raises(EnvError, match=r"MINI_VLLM_GC_FREEZE='maybe': expected 1/0.*--gc-freeze"):
        env_defaults()


@dataclass(frozen=True)
class _Stats:
    num_requests_running: int = 2
    num_requests_waiting: int = 1
    kv_cache_usage: float = 0.25
    prefix_cache_queries: int = 10
    prefix_cache_hits: int = 4
    num_preemptions: int = 0
    prompt_tokens_total: int = 100
    generation_tokens_total: int = 50
    iteration_token_buckets: tuple = (1, 8, 16)
    iteration_token_counts: tuple = (1, 2, 0, 0)
    iteration_tokens_sum: int = 12


def Stats() -> _Stats:  # noqa: N802 - the engine's stats() as the metrics read it
    return _Stats()


def test_metrics_text_format():
    """Parsed back with prometheus_client's parser: names, types, labels (escaped), buckets."""
    from prometheus_client.parser import text_string_to_metric_families

    m = ServerMetrics('m"x')
    m.bind(SimpleNamespace(stats=Stats, model_config=SimpleNamespace(max_model_len=1000, block_size=16,
                                                                    num_kv_blocks=64)))
    m.observe_first_token(0.03)
    m.observe_inter_token(0.2, tokens=4)
    out = SimpleNamespace(prompt_token_ids=[1] * 7, outputs=[SimpleNamespace(token_ids=[5] * 3)],
                          metrics={"arrival": 10.0, "scheduled": 10.5, "first_token": 11.0, "finished": 12.0})
    m.observe_finished("stop", 1.2, out, max_tokens=16, n=1)
    fams = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    lab = (("engine", "0"), ("model_name", 'm"x'))

    def at(name: str, **extra: str) -> float:
        return samples[(name, tuple(sorted(dict(lab, **extra).items())))]
    assert fams["vllm:num_requests_running"].type == "gauge" and samples[("vllm:num_requests_running", lab)] == 2
    assert samples[("vllm:kv_cache_usage_perc", lab)] == samples[("vllm:gpu_cache_usage_perc", lab)] == 0.25
    assert fams["vllm:prefix_cache_hits"].type == "counter" and samples[("vllm:prefix_cache_hits_total", lab)] == 4
    assert samples[("vllm:gpu_prefix_cache_hits_total", lab)] == 4
    assert at("vllm:request_success_total", finished_reason="stop") == 1
    assert at("vllm:time_to_first_token_seconds_bucket", le="0.02") == 0
    assert at("vllm:time_to_first_token_seconds_bucket", le="0.04") == 1
    assert at("vllm:inter_token_latency_seconds_bucket", le="0.05") == 4
    assert samples[("vllm:time_per_output_token_seconds_count", lab)] == 4
    assert samples[("vllm:request_queue_time_seconds_sum", lab)] == 0.5
    assert samples[("vllm:request_prefill_time_seconds_sum", lab)] == 0.5
    assert samples[("vllm:request_decode_time_seconds_sum", lab)] == 1.0
    assert samples[("vllm:request_time_per_output_token_seconds_sum", lab)] == 0.5    # 1 s over 2 gaps
    assert at("vllm:request_prompt_tokens_bucket", le="10.0") == 1
    assert at("vllm:request_prompt_tokens_bucket", le="5.0") == 0
    assert not any(n == "vllm:request_prompt_tokens_bucket" and dict(k).get("le") == "2000.0" for n, k in samples)
    assert samples[("vllm:iteration_tokens_total_count", lab)] == 3 and fams["vllm:iteration_tokens_total"].type == "histogram"
    assert not any(name.endswith("_created") for name, _ in samples)
    # before a model is bound there are no stats: zeros, not an error
    assert b'vllm:num_requests_waiting{engine="0",model_name="m\\"x"} 0.0' in ServerMetrics('m"x').render()


def test_sse_event_survives_unicode_line_breakers():
    """Generated text may hold U+2028/U+2029/U+0085: each event must still be one line to any splitter."""
    import json

    from mini_vllm.api.sse import event

    text = "a\u2028b\u2029c\x85d\ne\u00e9"
    raw = event({"choices": [{"text": text}]}).decode()
    lines = [ln for ln in raw.splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("data: ")
    assert json.loads(lines[0][6:])["choices"][0]["text"] == text


def _old_event(payload) -> bytes:
    """The reference encoding the precomputed chunks must reproduce byte for byte."""
    import json
    breakers = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).translate(breakers).encode() + b"\n\n"


def test_precomputed_chunks_match_the_general_encoding_byte_for_byte():
    import random

    from mini_vllm.api.sse import Chunks, encode, event

    rng = random.Random(7)
    alphabet = ["a", " ", "\"", "\\", "\n", "\t", "\x00", "\x1f", "\u00e9", "\u2028", "\u2029", "\x85", "\U0001f600",
                "</", "\u4e2d"]
    for model in ("gpt-oss-20b", "m\"\u2028x"):
        head = {"id": "cmpl-1", "object": "text_completion", "created": 1763939000, "model": model}
        chunks = Chunks(head)
        for _ in range(300):
            text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 8)))
            finish = rng.choice([None, "stop", "length"])
            stop = rng.choice([None, 200002, "</", "\u2028"])
            idx = rng.randrange(0, 5)
            choice = {"index": idx, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": stop}
            want = _old_event(dict(head, choices=[choice]))
            assert chunks.event([Chunks.text_choice(idx, text, finish, stop)]) == want
            assert chunks.event([encode(choice)]) == want == event(dict(head, choices=[choice]))
        two = [{"index": 0, "delta": {"content": "x"}}, {"index": 1, "delta": {}}]
        assert chunks.event([encode(c) for c in two]) == _old_event(dict(head, choices=two))


def test_switch_interval_knob(monkeypatch):
    import sys

    from mini_vllm.api.app import set_switch_interval

    before = sys.getswitchinterval()
    try:
        assert set_switch_interval(None) == before                     # unset: left alone
        assert abs(set_switch_interval(1.0) - 0.001) < 1e-9
        for bad in (0.0, -1.0, 5000.0):
            with pytest.raises(ValueError, match="expected milliseconds"):
                set_switch_interval(bad)
        assert abs(sys.getswitchinterval() - 0.001) < 1e-9              # a bad value changes nothing
        for bad in ("0", "-1", "fast", "5000"):                           # from the environment: refused at parse
            monkeypatch.setenv("MINI_VLLM_SWITCH_INTERVAL_MS", bad)
            with pytest.raises(EnvError, match="MINI_VLLM_SWITCH_INTERVAL_MS"):
                env_defaults()
    finally:
        sys.setswitchinterval(before)
