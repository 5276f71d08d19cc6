"""`invoke rollout --target local`, `invoke verify`, status, logs, `--delete` - the real server, for real."""
from __future__ import annotations

import json

import httpx
import pytest

from cluster_helpers import follow_logs, free_port, invoke, tiny_model, wait_for_line
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
    state = json.loads((tmp_path / "rollout/local/mini-vllm-tiny-gpt-oss.json").read_text())
    follower = None
    try:
        assert alive(state["pid"]) and state["url"].endswith(env["MINI_VLLM_PORT"])
        again = invoke("rollout", "--target", "local", "--model", str(model), env=env)
        assert again.returncode == 0 and "already serving" in again.stdout     # idempotent
        follower = follow_logs(env, "--tail", "0")
        v = invoke("verify", env=env)
        assert v.returncode == 0, v.stdout
        # logs -f: the request lines the server writes while it runs reach the follower as they come
        seen = wait_for_line(follower, "POST /v1/chat/completions", timeout=5)
        for _ in range(5):     # the follower may have started after verify's requests: send more
            if seen:
                break
            httpx.post(f"{state['url']}/v1/chat/completions", headers={"Authorization": "Bearer sk-local-test"},
                       json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}, timeout=60)
            seen = wait_for_line(follower, "POST /v1/chat/completions", timeout=5)
        assert seen, "logs -f showed no request line"
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
    assert follower.wait(timeout=30) == 0      # the server stopped: logs -f ends by itself
    assert "not deployed" in invoke("status", env=env).stdout
    assert invoke("verify", env=env).returncode != 0


def test_a_server_that_cannot_load_fails_fast_and_leaves_nothing(tmp_path):
    env = {"MINI_VLLM_ROLLOUT_DIR": str(tmp_path / "rollout"), "MINI_VLLM_PORT": str(free_port())}
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    r = invoke("rollout", "--target", "local", "--model", str(empty), env=env, timeout=120)
    assert r.returncode == 1
    assert "rollout failed" in r.stdout and "last lines of" in r.stdout
    assert not (tmp_path / "rollout/local/mini-vllm-not-a-model.json").exists()


def test_invoke_batch_locally_with_progress_and_resume(model, tmp_path):
    env = {"MINI_VLLM_ROLLOUT_DIR": str(tmp_path / "rollout")}
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions",
                                       "body": {"prompt": f"line {i}", "max_tokens": 4, "temperature": 0}}) + "\n"
                           for i in range(5)) + "{oops\n")
    r = invoke("batch", "--input", str(src), "--output", str(dst), "--model", str(model), env=env)
    assert r.returncode == 0 and "batch done" in r.stdout and "6/6 done, 1 failed" in r.stdout, r.stdout
    lines = [json.loads(x) for x in dst.read_text().splitlines()]
    assert sorted(o["custom_id"] or "-" for o in lines) == ["-", "r0", "r1", "r2", "r3", "r4"]
    again = invoke("batch", "--input", str(src), "--output", str(dst), "--model", str(model), env=env)
    assert again.returncode == 0 and "6 from an earlier run" in again.stdout, again.stdout
    assert dst.read_text().count("\n") == 6
    missing = invoke("batch", "--input", str(tmp_path / "nope.jsonl"), "--output", str(dst), env=env)
    assert missing.returncode == 1 and "no such file" in missing.stdout and "Traceback" not in missing.stdout
