"""A real Prometheus (Debian `prometheus`) scrapes a real local rollout - two replicas of the tiny model
behind the real vllm-router - through the scrape config that `invoke rollout` wrote; under load every
dashboard query (servers and router) returns data, and the autoscaling query crosses its threshold, then
falls back once the load ends. Scrape and evaluation intervals are 1 s.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from cluster_helpers import free_port, tiny_model
from minibuild.bench.load import Workload, run_level
from minibuild.cluster import autoscale, rollout
from minibuild.cluster.dashboard import JSON_PATH, expand, queries
from minibuild.cluster.dashboard_png import render
from minibuild.cluster.promql import finite, query, query_range, targets
from minibuild.cluster.settings import make_plan
from minibuild.config import parse_config, read_document

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from prometheus_server import prometheus_with_config  # noqa: E402 - the tests' Prometheus runner
RATE = "5s"                 # $__rate_interval: a few 1 s scrapes
TOOLS = ROOT / ".venv-tools"
if not (Path(os.environ.get("MINI_VLLM_TOOLS_DIR") or TOOLS) / "vllm-router/bin/vllm-router").exists():
    pytest.skip("the vllm-router venv is missing: run ./dev (it makes .venv-tools/)", allow_module_level=True)


@pytest.fixture()
def cfg(tmp_path):
    doc = read_document(ROOT / "build_config.yaml")
    doc["cluster"]["monitoring"].update(scrape_interval="1s", evaluation_interval="1s")
    # a small batch so that load queues requests: vllm:num_requests_waiting is the autoscaling signal
    doc["cluster"]["targets"]["local"].update(server_args=["--max-num-seqs", "4"],
                                              model_path=str(tiny_model(tmp_path / "tiny-gpt-oss")))
    return parse_config(doc, ROOT, {**os.environ, "MINI_VLLM_ROLLOUT_DIR": str(tmp_path / "rollout"),
                                    "MINI_VLLM_PORT": str(free_port())})


def _until(fn, timeout: float, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(every)
    return None


def test_dashboard_queries_and_autoscaling_signal_on_live_prometheus(cfg, tmp_path):
    plan = make_plan(cfg, "local")
    config = tmp_path / "rollout/local/prometheus/prometheus.yml"
    try:
        assert rollout(cfg, target="local", replicas=2, router="round_robin")
        router = json.loads((tmp_path / f"rollout/local/{plan.name}-router.json").read_text())
        with prometheus_with_config(config, tmp_path / "prometheus") as p:
            _check_live(cfg, plan, router, p.url, Path(os.environ.get("MINI_VLLM_DASHBOARD_PNG_DIR") or tmp_path))
    finally:
        assert rollout(cfg, target="local", delete=True)
    assert json.loads((tmp_path / "rollout/local/prometheus/servers.json").read_text()) == []   # targets follow
    assert json.loads((tmp_path / "rollout/local/prometheus/routers.json").read_text()) == []


def _check_live(cfg, plan, router, prom: str, out: Path) -> None:
    up = _until(lambda: len([t for t in targets(prom) if t["health"] == "up"]) == 3 and targets(prom), 30)
    assert up, targets(prom)
    by_job = {}
    for t in up:
        by_job.setdefault(t["labels"]["job"], []).append(t["labels"])
    assert sorted(lb["instance"].split("@")[0] for lb in by_job["mini-vllm"]) == [plan.name, f"{plan.name}-r1"]
    assert {lb["app"] for lb in by_job["mini-vllm"]} == {plan.name}          # one deployment, two replicas
    assert [lb["app"] for lb in by_job["vllm-router"]] == [f"{plan.name}-router"]

    auto = cfg.cluster.autoscale
    q = autoscale.query(auto.metric, plan.name, None)      # what KEDA runs, with the local labels
    threshold = auto.waiting_per_replica
    t0 = time.time()
    w = Workload(input_len=48, output_len=16, model=plan.served_name)
    peak: list[float] = []

    seen = threading.Event()                # a scrape caught the queue above the threshold

    def load() -> None:
        # 24 in flight against 2 x 4 slots: ~16 waiting; rounds repeat the same prompts (prefix-cache
        # hits) until a scrape (every second) has seen the queue or 45 s pass - a round alone may fall
        # between two scrapes on a fast machine
        rounds = 0
        while rounds < 2 or (not seen.is_set() and time.time() - t0 < 45):
            run_level(router["url"], w, 24, 64)
            rounds += 1
    th = threading.Thread(target=load)
    th.start()
    while th.is_alive():
        peak += [v for _, v in query(prom, q)]
        if peak and max(peak) > threshold:
            seen.set()
        time.sleep(0.5)
    th.join()
    assert peak and max(peak) > threshold, f"{q} peaked at {max(peak, default=None)} (threshold {threshold})"
    assert autoscale.desired_replicas(max(peak), threshold, 1, 4) > 1
    fell = _until(lambda: all(v <= threshold for _, v in query(prom, q)) and query(prom, q), 15)
    assert fell, f"{q} did not fall back to <= {threshold} after the load"
    time.sleep(2)
    t1 = time.time()

    dash = json.loads(JSON_PATH.read_text())
    empty = [f"{title} [{legend}]: {expand(expr, RATE)}" for title, legend, expr in queries(dash)
             if not finite(query_range(prom, expand(expr, RATE), t0, t1, 1.0))]
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
    per = query_range(prom, expand('sum by (instance) (rate(vllm:generation_tokens_total[$__rate_interval]))', RATE),
                      t0, t1, 1.0)
    assert len([lb for lb, pts in per if max(v for _, v in pts) > 0]) == 2       # both replicas served
    hit = query_range(prom, expand('sum(rate(vllm:prefix_cache_hits_total[$__rate_interval]))', RATE), t0, t1, 1.0)
    assert max(v for _, pts in hit for _, v in pts) > 0          # the repeated prompts did hit

    out.mkdir(parents=True, exist_ok=True)
    png = render(prom, dash, t0 - 5, t1, out / "dashboard.png", rate_interval=RATE,
                 note="tiny GPT-OSS on the CPU: 2 local replicas (--max-num-seqs 4) behind vllm-router "
                      "round_robin; rounds of 64 requests at concurrency 24")
    data = json.loads(png.with_suffix(".json").read_text())
    assert png.stat().st_size > 10_000 and all(p["series"] for p in data["panels"])
