"""MODEL as a Hugging Face id or s3:// URI, as `vllm serve` takes it: real servers on 127.0.0.1, no internet.

- Hugging Face: a local endpoint speaking the hub's file routes (tests/hf_hub_server.py) reached through
  HF_ENDPOINT; huggingface_hub does the download. One file's first transfer is cut off and must be resumed
  with an HTTP Range request; the token the endpoint sees is the one given (flag, or HF_TOKEN /
  HUGGING_FACE_HUB_TOKEN). A second start reuses the completed cache (the EKS pod restarting on its
  volume): no file is fetched again, and with the endpoint gone it still starts. A populated HF_HOME cache
  serves with HF_HUB_OFFLINE=1.
- S3: moto's server mode on 127.0.0.1 (AWS itself is not reached), boto3's default chain.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from hf_hub_server import FakeHub, populate_cache
from server_process import free_port, start_server

REPO = "acme/tiny-gpt-oss"
FLAGS = ("--max-model-len", "256", "--kv-cache-memory-gb", "0.02", "--device", "cpu", "--disable-uvicorn-access-log")
BIG = "extra/notes.txt"                      # > 10 MiB: huggingface_hub resumes it after the first whole chunk
CUT_AT = 12 * 1024 * 1024


@pytest.fixture(scope="module")
def repo_dir(tiny_model, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("repo")
    for f in tiny_model.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    (d / "extra").mkdir()
    (d / BIG).write_bytes(os.urandom(20 * 1024 * 1024))
    (d / "original").mkdir()                    # GPT-OSS repos carry the weights twice: never fetched
    (d / "original" / "model.safetensors").write_bytes(b"\0" * 1024)
    return d


@pytest.fixture
def hub(repo_dir):
    h = FakeHub({REPO: repo_dir}).start()
    yield h
    h.stop()


def _ask(srv, model: str) -> str:
    r = httpx.post(srv.url + "/v1/completions", json={"model": model, "prompt": "Hello", "max_tokens": 3}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def _serve(model: str, *flags: str, logs: Path, env: dict[str, str]):
    srv = start_server(model, *FLAGS, *flags, log_dir=logs, env=env)
    srv.wait_ready(180)
    return srv


def _hf_env(tmp_path: Path, endpoint: str, **extra: str) -> dict[str, str]:
    env = {"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_TOKEN": "", "HUGGING_FACE_HUB_TOKEN": "", "HF_HUB_OFFLINE": "0"}
    return {**env, **extra}


def test_hf_id_downloads_resumes_and_is_reused_from_the_cache(hub, repo_dir, tmp_path, logs):
    cache = tmp_path / "pvc" / "hub"                     # --download-dir on the persistent volume
    hub.cut_once[BIG] = CUT_AT
    env = _hf_env(tmp_path, hub.url, HUGGING_FACE_HUB_TOKEN="hf_from_env")
    srv = _serve(REPO, "--download-dir", str(cache), logs=logs, env=env)
    try:
        models = httpx.get(srv.url + "/v1/models").json()["data"]
        assert [m["id"] for m in models] == [REPO]                   # the served name is the id as given
        first = _ask(srv, REPO)
    finally:
        srv.stop()
    assert {s.authorization for s in hub.seen} == {"Bearer hf_from_env"}
    big = [s for s in hub.seen if s.method == "GET" and s.path.endswith(BIG)]
    assert [s.range for s in big] == [None, "bytes=10485760-"], big         # cut, then resumed by Range
    snap = next((cache / f"models--{REPO.replace('/', '--')}" / "snapshots").iterdir())
    assert (snap / BIG).read_bytes() == (repo_dir / BIG).read_bytes()
    assert not any("original/" in s.path for s in hub.seen) and not (snap / "original").exists()

    # a restarted pod on the same volume: the flag's token wins, metadata only, no file fetched again
    hub.seen.clear()
    srv = _serve(REPO, "--download-dir", str(cache), "--hf-token", "hf_from_flag", logs=logs, env=env)
    try:
        assert _ask(srv, REPO) == first
    finally:
        srv.stop()
    assert hub.seen and {s.authorization for s in hub.seen} == {"Bearer hf_from_flag"}
    assert not [s for s in hub.seen if s.method == "GET" and "/resolve/" in s.path]

    # the hub unreachable (no HF_HUB_OFFLINE set): the completed cache still starts the server
    hub.stop()
    srv = _serve(REPO, "--download-dir", str(cache), logs=logs, env=env)
    try:
        assert _ask(srv, REPO) == first
    finally:
        srv.stop()


def test_populated_hf_home_cache_serves_offline(repo_dir, tmp_path, logs):
    files = {p.name: p for p in repo_dir.iterdir() if p.is_file()}
    populate_cache(tmp_path / "hf-home" / "hub", REPO, files, sha="f" * 40)
    env = _hf_env(tmp_path, f"http://127.0.0.1:{free_port()}", HF_HUB_OFFLINE="1")   # nothing listens there
    srv = _serve(REPO, "--served-model-name", "gpt-oss-20b", logs=logs, env=env)
    try:
        assert [m["id"] for m in httpx.get(srv.url + "/v1/models").json()["data"]] == ["gpt-oss-20b"]
        _ask(srv, "gpt-oss-20b")
    finally:
        srv.stop()


def _fails(model: str, env: dict[str, str], *flags: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "mini_vllm.cli", "serve", model, *FLAGS, *flags, "--port",
                           str(free_port())], env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("mini-vllm serve:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_unfetchable_models_fail_in_one_line(hub, tmp_path):
    line = _fails(REPO, _hf_env(tmp_path, hub.url, HF_HUB_OFFLINE="1"))
    assert REPO in line and "HF_HUB_OFFLINE" in line
    line = _fails("acme/no-such-model", _hf_env(tmp_path, hub.url))
    assert "acme/no-such-model" in line and "not found" in line
    assert "does not exist" in _fails(str(tmp_path / "missing-dir"), {})


@pytest.fixture(scope="module")
def moto_s3():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def test_s3_prefix_downloads_and_restarts_from_its_copy(moto_s3, repo_dir, tmp_path, logs):
    env = {"AWS_ENDPOINT_URL": moto_s3, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    s3 = boto3.client("s3", endpoint_url=moto_s3, aws_access_key_id="testing", aws_secret_access_key="testing",
                      region_name="us-east-1")
    s3.create_bucket(Bucket="models")
    for p in repo_dir.rglob("*"):
        if p.is_file():
            s3.upload_file(str(p), "models", f"inference/tiny/{p.relative_to(repo_dir).as_posix()}")
    uri, dest = "s3://models/inference/tiny", tmp_path / "s3-cache"
    srv = _serve(uri, "--download-dir", str(dest), logs=logs, env=env)
    try:
        assert [m["id"] for m in httpx.get(srv.url + "/v1/models").json()["data"]] == [uri]
        first = _ask(srv, uri)
    finally:
        srv.stop()
    local = dest / "models" / "inference" / "tiny"
    assert (local / "model.safetensors").read_bytes() == (repo_dir / "model.safetensors").read_bytes()
    assert not (local / "original").exists()
    # S3 unreachable on restart: the completed copy is used
    srv = _serve(uri, "--download-dir", str(dest), logs=logs, env={**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"})
    try:
        assert _ask(srv, uri) == first
        assert "using the completed copy" in srv.log()
    finally:
        srv.stop()


def test_revision_and_hf_token_reach_the_hub(hub, tmp_path):
    """--revision is what the hub is asked for; HF_TOKEN wins over HUGGING_FACE_HUB_TOKEN (huggingface_hub's order)."""
    code = ("import sys; from mini_vllm.cli import parse_args; from mini_vllm.entrypoints.serve import fetch_model; "
            "print(fetch_model(parse_args(sys.argv[1:]))[0])")
    env = {**os.environ, **_hf_env(tmp_path, hub.url, HF_TOKEN="hf_first", HUGGING_FACE_HUB_TOKEN="hf_second")}
    proc = subprocess.run([sys.executable, "-c", code, "serve", REPO, "--revision", "v2", "--download-dir",
                           str(tmp_path / "cache")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (Path(proc.stdout.strip().splitlines()[-1]) / "config.json").is_file()
    assert [s.path for s in hub.seen if "/revision/" in s.path] == [f"/api/models/{REPO}/revision/v2"]
    assert {s.authorization for s in hub.seen} == {"Bearer hf_first"}
