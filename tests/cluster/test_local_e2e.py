"""`invoke rollout --target local`, `invoke verify`, status, logs, `--delete` - the real server, for real."""
from __future__ import annotations

import json

import pytest

from cluster_helpers import free_port, invoke, tiny_model
from minibuild.cluster.local import alive

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-gpt-oss")


def test_rollout_verify_status_logs_delete(model, tmp_path):
    env = {"MINI_VLLM_ROLLOUT_DIR": str(tmp_path / "rollout"), "MINI_VLLM_PORT": str(free_port()),
           "MINI_VLLM_API_KEY": "sk-local-test"}
    r = invoke("rollout", "--target", "local", "--model", str(model), env=env)
    assert r.returncode == 0, r.stdout
    state = json.loads((tmp_path / "rollout/local/mini-vllm-gptoss-tp1.json").read_text())
    try:
        assert alive(state["pid"]) and state["url"].endswith(env["MINI_VLLM_PORT"])
        again = invoke("rollout", "--target", "local", "--model", str(model), env=env)
        assert again.returncode == 0 and "already serving" in again.stdout     # idempotent
        v = invoke("verify", env=env)
        assert v.returncode == 0, v.stdout
        for check in ("health", "models", "completion", "chat", "chat stream", "metrics", "verify passed"):
            assert check in v.stdout
        bad = invoke("verify", "--api-key", "sk-wrong", env=env)
        assert bad.returncode != 0 and "FAILED" in bad.stdout and "models" in bad.stdout.split("verify failed:")[-1]
        st = invoke("status", env=env)
        assert "running" in st.stdout and "yes" in st.stdout, st.stdout
        lg = invoke("logs", "--tail", "200", env=env)
        assert "/v1/chat/completions" in lg.stdout or "chat/completions" in lg.stdout, lg.stdout[-2000:]
    finally:
        d = invoke("rollout", "--target", "local", "--delete", env=env)
    assert d.returncode == 0 and not alive(state["pid"])
    assert "not deployed" in invoke("status", env=env).stdout
    assert invoke("verify", env=env).returncode != 0


def test_a_server_that_cannot_load_fails_fast_and_leaves_nothing(tmp_path):
    env = {"MINI_VLLM_ROLLOUT_DIR": str(tmp_path / "rollout"), "MINI_VLLM_PORT": str(free_port())}
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    r = invoke("rollout", "--target", "local", "--model", str(empty), env=env, timeout=120)
    assert r.returncode == 1
    assert "rollout failed" in r.stdout and "last lines of" in r.stdout
    assert not (tmp_path / "rollout/local/mini-vllm-gptoss-tp1.json").exists()
