"""`invoke rollout --target slurm` on a real Slurm (munge + slurmctld + slurmd started here, one cluster for
the module): two models served side by side as their own jobs on their own ports, both verified; a TP=8
job beside them waits with reason Resources; `invoke logs -f` follows a job's output as the server
writes it; deleting one model leaves the other serving; a server that cannot load fails the rollout;
a batch job cancelled mid-run resumes when rerun and its answers match the model served by a job.
"""
from __future__ import annotations

import json
import os
import subprocess
import time

import httpx
import pytest

from cluster_helpers import INVOKE, ROOT, follow_logs, free_port, invoke, tiny_model, wait_for_line
from minibuild.cluster import rollout
from minibuild.config import parse_config, read_document
from slurm_cluster import SlurmCluster, missing_binaries

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    missing = missing_binaries()
    if missing:
        pytest.skip(f"Slurm/munge binaries missing: {', '.join(missing)} (apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("the test cluster runs slurmd as root (SlurmdUser=root) and mknods fake GPUs")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two model directories named like the user's (the tiny checkpoint behind both)."""
    d = tmp_path_factory.mktemp("models")
    small = tiny_model(d / "gpt-oss-20b")
    (d / "gpt-oss-120b").symlink_to(small)
    return d / "gpt-oss-20b", d / "gpt-oss-120b"


def _squeue(env: dict[str, str], name: str) -> str:
    return subprocess.run(["squeue", "-h", "-n", name, "-o", "%T %r"], env=env, capture_output=True,
                          text=True).stdout.strip()


def _env(slurm: SlurmCluster, tmp_path) -> dict[str, str]:
    return {"SLURM_CONF": str(slurm.conf), "MINI_VLLM_ROLLOUT_DIR": str(tmp_path / "rollout"),
            "MINI_VLLM_PORT": str(free_port())}


def _serve(slurm: SlurmCluster, tmp_path, env: dict[str, str], tp: int, model) -> str:
    """Roll out and verify one model; returns the URL it serves at."""
    r = invoke("rollout", "--target", "slurm", "--tp", str(tp), "--model", str(model), env=env, timeout=400)
    assert r.returncode == 0, r.stdout
    assert f"RUNNING on {slurm.node}" in r.stdout and "runtime: venv" in r.stdout
    name = f"mini-vllm-{model.name}"
    out = next((tmp_path / "rollout/slurm").glob(f"{name}-*.out")).read_text()
    gpus = {1: "0", 2: "1,2"}[tp]                      # the second job gets the GPUs after the first's
    assert f"CUDA_VISIBLE_DEVICES={gpus}\n" in out, out
    v = invoke("verify", "--target", "slurm", "--served-model-name", model.name, env=env)
    assert v.returncode == 0 and "verify passed" in v.stdout, v.stdout
    return json.loads((tmp_path / f"rollout/slurm/{name}.json").read_text())["url"]


def _models(url: str) -> list[str]:
    return [m["id"] for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]]


def test_two_models_side_by_side_follow_logs_delete_one(slurm, models, tmp_path, monkeypatch):
    small, big = models
    env = _env(slurm, tmp_path)
    follower = None
    try:
        url_small = _serve(slurm, tmp_path, env, 1, small)
        url_big = _serve(slurm, tmp_path, env, 2, big)
        assert url_small != url_big and url_small.rsplit(":", 1)[1] == env["MINI_VLLM_PORT"]
        assert _models(url_small) == ["gpt-oss-20b"] and _models(url_big) == ["gpt-oss-120b"]
        st = invoke("status", "--target", "slurm", env=env)
        assert st.stdout.count("RUNNING") == 2 and "gpt-oss-120b" in st.stdout and "gpt-oss-20b" in st.stdout, st.stdout
        # the Prometheus scrape targets follow the running jobs (docs/observability.md)
        sd_file = tmp_path / "rollout/slurm/prometheus/servers.json"
        assert sorted(e["targets"][0] for e in json.loads(sd_file.read_text())) == \
            sorted(u.split("://")[1] for u in (url_small, url_big))

        # TP=8 beside them: 8 GPUs wanted, 5 free -> queued, not failed; rollout says so and leaves it queued.
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        doc = read_document(ROOT / "build_config.yaml")
        doc["cluster"]["targets"]["slurm"]["queue_timeout_s"] = 4
        cfg = parse_config(doc, ROOT)
        assert rollout(cfg, target="slurm", tp=8, model=str(small), served_name="wide") is False
        assert _squeue(env, "mini-vllm-wide") == "PENDING Resources"
        assert "Resources" in invoke("status", "--target", "slurm", "--served-model-name", "wide", env=env).stdout

        # logs -f follows the job's output file: a request's access-log line arrives while the job runs
        follower = follow_logs({**env}, "--target", "slurm", "--served-model-name", "gpt-oss-120b", "--tail", "0")
        assert any(httpx.post(f"{url_big}/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=60)
                   and wait_for_line(follower, "POST /v1/completions", timeout=5) for _ in range(6)), \
            "logs -f showed no request line"   # (requests repeat: the follower may start after the first)

        # delete one model: the other keeps serving
        d = invoke("rollout", "--target", "slurm", "--delete", "--served-model-name", "gpt-oss-120b", env=env)
        assert d.returncode == 0 and _squeue(env, "mini-vllm-gpt-oss-120b") == ""
        assert follower.wait(timeout=60) == 0           # its job left the queue: logs -f ends by itself
        assert _squeue(env, "mini-vllm-gpt-oss-20b") == "RUNNING None"
        assert [e["labels"]["app"] for e in json.loads(sd_file.read_text())] == ["mini-vllm-gpt-oss-20b"]
        v = invoke("verify", "--target", "slurm", env=env)     # the only one left is found without a name
        assert v.returncode == 0 and "verify passed" in v.stdout, v.stdout
    finally:
        if follower and follower.poll() is None:
            follower.kill()
        for name in ("gpt-oss-20b", "gpt-oss-120b", "wide"):
            invoke("rollout", "--target", "slurm", "--delete", "--served-model-name", name, env=env)
    for name in ("gpt-oss-20b", "gpt-oss-120b", "wide"):
        assert _squeue(env, f"mini-vllm-{name}") == ""


def _batch_input(path, n: int) -> list[dict]:
    reqs = []
    for i in range(n):
        url, body = (("/v1/completions", {"prompt": f"Batch line {i} says"}) if i % 2 else
                     ("/v1/chat/completions", {"messages": [{"role": "user", "content": f"Question {i}?"}]}))
        reqs.append({"custom_id": f"r{i}", "method": "POST", "url": url,
                     "body": {**body, "max_tokens": 24, "temperature": 0}})
    path.write_text("".join(json.dumps(r) + "\n" for r in reqs) + '{"custom_id": "bad", "url": "/v1/x"}\n')
    return reqs


def test_batch_job_resumes_after_scancel_and_matches_the_server(slurm, models, tmp_path):
    small, _ = models
    env = _env(slurm, tmp_path)
    src, dst = tmp_path / "requests.jsonl", tmp_path / "results" / "results.jsonl"
    reqs = _batch_input(src, 60)
    args = ("batch", "--target", "slurm", "--model", str(small), "--input", str(src), "--output", str(dst))
    try:
        job = subprocess.Popen([str(INVOKE), *args], cwd=ROOT, env={**os.environ, **env}, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not _squeue(env, "mini-vllm-gpt-oss-20b-batch") and time.monotonic() < deadline:
            time.sleep(0.1)
        st = invoke("status", "--target", "slurm", env=env)          # batch jobs are listed too
        assert "slurm batch jobs" in st.stdout and "mini-vllm-gpt-oss-20b-batch" in st.stdout, st.stdout
        while not (dst.exists() and dst.read_text().count("\n") >= 2) and time.monotonic() < deadline:
            time.sleep(0.1)
        subprocess.run(["scancel", "--name", "mini-vllm-gpt-oss-20b-batch"], env=env, check=True)
        out, _ = job.communicate(timeout=120)
        assert job.returncode == 1 and "CANCELLED" in out and "rerun the same command to resume" in out, out
        done_before = dst.read_text().count("\n")
        assert 2 <= done_before < len(reqs) + 1, "the scancel should land mid-run"

        again = invoke(*args, env=env, timeout=400)
        assert again.returncode == 0 and "batch done" in again.stdout, again.stdout
        assert f"{done_before} from an earlier run" in again.stdout
        lines = [json.loads(x) for x in dst.read_text().splitlines()]
        assert sorted(o["custom_id"] for o in lines) == sorted([r["custom_id"] for r in reqs] + ["bad"])
        assert next(o for o in lines if o["custom_id"] == "bad")["error"]["code"] == "invalid_request"

        # The same requests to the same model served by a Slurm job: the same answers (greedy).
        r = invoke("rollout", "--target", "slurm", "--model", str(small), env=env, timeout=400)
        assert r.returncode == 0, r.stdout
        url = json.loads((tmp_path / "rollout/slurm/mini-vllm-gpt-oss-20b.json").read_text())["url"]
        results = {o["custom_id"]: o["response"] for o in lines}
        for req in reqs[:12]:
            want = httpx.post(f"{url}{req['url']}", json=req["body"], timeout=120)
            got = results[req["custom_id"]]
            assert got["status_code"] == want.status_code == 200
            assert got["body"]["choices"] == want.json()["choices"], req["custom_id"]
    finally:
        subprocess.run(["scancel", "--name", "mini-vllm-gpt-oss-20b-batch"], env=env)
        invoke("rollout", "--target", "slurm", "--delete", "--served-model-name", "gpt-oss-20b", env=env)


def test_a_job_whose_server_cannot_load_fails(slurm, tmp_path):
    env = _env(slurm, tmp_path)
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    r = invoke("rollout", "--target", "slurm", "--tp", "1", "--model", str(empty), env=env, timeout=200)
    assert r.returncode == 1
    # load first, listen after: the server exits 1 with one line, so the job itself fails (nothing to cancel)
    assert "model failed to load" in r.stdout and "last lines of" in r.stdout
    assert _squeue(env, "mini-vllm-not-a-model") == ""


def test_replicas_behind_a_router_job(slurm, tmp_path):
    """Two model jobs and a vllm-router job beside them; verify goes through the router."""
    if not (ROOT / ".venv-tools/vllm-router/bin/vllm-router").exists():
        pytest.skip("vllm-router venv missing: run ./dev")
    model = tiny_model(tmp_path / "tiny-gpt-oss")
    env = {**_env(slurm, tmp_path), "MINI_VLLM_ROUTER_PORT": str(free_port()),
           "MINI_VLLM_ROUTER_METRICS_PORT": str(free_port())}
    try:
        r = invoke("rollout", "--target", "slurm", "--model", str(model), "--replicas", "2", "--router", "round_robin",
                   env=env, timeout=400)
        assert r.returncode == 0, r.stdout
        assert "submitted router job" in r.stdout
        st = json.loads(invoke("status", "--target", "slurm", "--json", env=env).stdout)
        assert [e["role"] for e in st] == ["replica", "replica", "router"], st
        assert all(e["ready"] and e["state"] == "RUNNING" for e in st), st
        router = st[-1]["url"]
        assert router.endswith(env["MINI_VLLM_ROUTER_PORT"])
        assert st[-1]["metrics_url"].endswith(f":{env['MINI_VLLM_ROUTER_METRICS_PORT']}/metrics")
        sd = tmp_path / "rollout/slurm/prometheus"      # the scrape targets: both replicas and the router
        assert sorted(e["targets"][0] for e in json.loads((sd / "servers.json").read_text())) == \
            sorted(e["url"].split("://")[1] for e in st[:2])
        assert [e["labels"]["__metrics_path__"] for e in json.loads((sd / "routers.json").read_text())] == ["/metrics"]
        assert httpx.get(st[-1]["metrics_url"], timeout=10).text.count("vllm_router_") > 0
        script = (tmp_path / "rollout/slurm/mini-vllm-tiny-gpt-oss-router.sbatch").read_text()
        assert all(e["url"] in script for e in st[:2]) and "--policy round_robin" in script
        v = invoke("verify", "--target", "slurm", env=env)
        assert v.returncode == 0 and f"verify {router}" in v.stdout, v.stdout
    finally:
        d = invoke("rollout", "--target", "slurm", "--delete", env=env)
    assert d.returncode == 0
    assert _squeue(slurm.env, "mini-vllm-tiny-gpt-oss") == "" and _squeue(slurm.env, "mini-vllm-tiny-gpt-oss-router") == ""
