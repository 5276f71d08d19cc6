"""`invoke rollout --target slurm` on a real Slurm (munge + slurmctld + slurmd started here): a job
serves the tiny model on the CPU with the GPUs Slurm assigned it, `invoke verify` passes, a TP=8 job
beside it waits with reason Resources, and `--delete` cancels both. TP=2 runs once the server's
tensor-parallel code is in the tree.
"""
from __future__ import annotations

import copy
import os
import subprocess

import pytest

from cluster_helpers import ROOT, free_port, invoke, tiny_model
from minibuild.cluster import rollout
from minibuild.config import load_config
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


def _squeue(env: dict[str, str], name: str) -> str:
    return subprocess.run(["squeue", "-h", "-n", name, "-o", "%T %r"], env=env, capture_output=True,
                          text=True).stdout.strip()


def _env(slurm: SlurmCluster, tmp_path) -> dict[str, str]:
    return {"SLURM_CONF": str(slurm.conf), "MINI_VLLM_ROLLOUT_DIR": str(tmp_path / "rollout"),
            "MINI_VLLM_PORT": str(free_port())}


def _serve_and_verify(slurm: SlurmCluster, tmp_path, env: dict[str, str], tp: int, model) -> None:
    r = invoke("rollout", "--target", "slurm", "--tp", str(tp), "--model", str(model), env=env, timeout=400)
    assert r.returncode == 0, r.stdout
    assert f"RUNNING on {slurm.node}" in r.stdout
    out = next((tmp_path / "rollout/slurm").glob(f"mini-vllm-gptoss-tp{tp}-*.out")).read_text()
    gpus = ",".join(str(i) for i in range(tp))
    assert f"CUDA_VISIBLE_DEVICES={gpus}\n" in out          # Slurm gave the job tp of the 8 GPUs
    v = invoke("verify", "--target", "slurm", "--tp", str(tp), env=env)
    assert v.returncode == 0, v.stdout
    assert "verify passed" in v.stdout


def test_tp1_serves_and_tp8_beside_it_queues(slurm, tmp_path, monkeypatch):
    model = tiny_model(tmp_path / "tiny-gpt-oss")
    env = _env(slurm, tmp_path)
    try:
        _serve_and_verify(slurm, tmp_path, env, 1, model)
        # TP=8 beside it: 8 GPUs wanted, 7 free -> queued, not failed; rollout says so and leaves it queued.
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        cfg = copy.deepcopy(load_config(ROOT / "build_config.yaml"))
        cfg["cluster"]["targets"]["slurm"]["queue_timeout_s"] = 4
        assert rollout(cfg, target="slurm", tp=8, model=str(model)) is False
        assert _squeue(env, "mini-vllm-gptoss-tp8") == "PENDING Resources"
        st = invoke("status", "--target", "slurm", "--tp", "8", env=env)
        assert "PENDING" in st.stdout and "Resources" in st.stdout, st.stdout
        lg = invoke("logs", "--target", "slurm", "--tp", "1", env=env)
        assert "serving" in lg.stdout and "tp=1" in lg.stdout
    finally:
        d1 = invoke("rollout", "--target", "slurm", "--tp", "1", "--delete", env=env)
        d8 = invoke("rollout", "--target", "slurm", "--tp", "8", "--delete", env=env)
    assert d1.returncode == 0 and d8.returncode == 0
    assert _squeue(env, "mini-vllm-gptoss-tp1") == "" and _squeue(env, "mini-vllm-gptoss-tp8") == ""


def test_tp2_serves_on_two_gpus(slurm, tmp_path):
    pytest.importorskip("mini_vllm.parallel", reason="the server's tensor-parallel code (mini_vllm.parallel, "
                        "gloo on CPU) is not in the tree yet")
    model = tiny_model(tmp_path / "tiny-gpt-oss")
    env = _env(slurm, tmp_path)
    try:
        _serve_and_verify(slurm, tmp_path, env, 2, model)
    finally:
        invoke("rollout", "--target", "slurm", "--tp", "2", "--delete", env=env)
    assert _squeue(env, "mini-vllm-gptoss-tp2") == ""


def test_a_job_whose_server_cannot_load_fails(slurm, tmp_path):
    env = _env(slurm, tmp_path)
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    r = invoke("rollout", "--target", "slurm", "--tp", "1", "--model", str(empty), env=env, timeout=200)
    assert r.returncode == 1
    # load first, listen after: the server exits 1 with one line, so the job itself fails (nothing to cancel)
    assert "model failed to load" in r.stdout and "last lines of" in r.stdout
    assert _squeue(env, "mini-vllm-gptoss-tp1") == ""
