"""verify's pieces that need no server: metric-name parsing, and a clear failure when nothing answers."""
from __future__ import annotations

from pathlib import Path

from cluster_helpers import free_port
from minibuild.cluster import rollout
from minibuild.config import load_config
from minibuild.verify import has_metric, metric_names, verify

ROOT = Path(__file__).resolve().parents[2]

EXPOSITION = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="gpt-oss-20b"} 0.0
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="gpt-oss-20b"} 143.0
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{le="0.3",model_name="gpt-oss-20b"} 1.0
vllm:e2e_request_latency_seconds_sum{model_name="gpt-oss-20b"} 0.06
"""


def test_metric_names_counters_and_histograms():
    names = metric_names(EXPOSITION)
    assert has_metric(names, "vllm:num_requests_running")
    assert has_metric(names, "vllm:prompt_tokens")                   # exposed as _total
    assert has_metric(names, "vllm:e2e_request_latency_seconds")     # exposed as _bucket/_sum
    assert not has_metric(names, "vllm:num_requests_waiting")
    assert not has_metric(names, "vllm:prompt")                      # no prefix matches


def test_nothing_listening_fails_at_health(capsys):
    cfg = load_config(ROOT / "build_config.yaml")
    assert verify(cfg, url=f"http://127.0.0.1:{free_port()}") is False
    out = capsys.readouterr().out
    assert "health" in out and "FAILED" in out and "verify failed: health" in out


def test_dry_runs_of_process_targets_print_what_would_run(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MINI_VLLM_ROLLOUT_DIR", str(tmp_path))
    cfg = load_config(ROOT / "build_config.yaml")
    assert rollout(cfg, target="slurm", tp=2, dry_run=True)
    assert "#SBATCH --gres=gpu:2" in capsys.readouterr().out
    assert rollout(cfg, target="local", tp=1, dry_run=True, model=str(tmp_path))
    assert "mini_vllm.cli serve" in capsys.readouterr().out
    assert not list(tmp_path.glob("*/*.json"))                        # nothing started, nothing recorded
