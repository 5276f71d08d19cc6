"""Credential sources and challenges: ECR tokens (moto's ECR server mode on 127.0.0.1 - AWS itself is
not reached), docker config.json, and the bearer-token flow against docker-registry's token mode."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from image_helpers import Registry, free_port, write_docker_config
from minibuild.image import AuthError, push_stage
from minibuild.image.auth import credentials_for, docker_config_credentials, parse_challenge
from minibuild.image.oci import Layout
from minibuild.image.registry import Reference, RegistryClient

ECR_HOST = "123456789012.dkr.ecr.eu-west-2.amazonaws.com"


@pytest.fixture
def moto_ecr(monkeypatch, tmp_path):
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    log = open(tmp_path / "moto.log", "wb")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto_server did not start")
            time.sleep(0.2)
    monkeypatch.setenv("AWS_ENDPOINT_URL_ECR", url)
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    yield url
    proc.terminate()
    proc.wait(10)
    log.close()


def test_ecr_token_from_moto_is_used_against_a_real_registry(moto_ecr, small_build, session_store, tmp_path):
    creds = credentials_for(ECR_HOST)
    assert creds is not None and creds.username == "AWS" and creds.password
    assert creds.password not in repr(creds)
    # A registry that accepts exactly that ECR user/password (htpasswd) takes our push with it.
    reg = Registry(tmp_path / "reg", users={creds.username: creds.password})
    try:
        cfg, results = small_build
        layout = Layout(cfg.path(cfg.images.out_dir) / "oci")
        target = Reference.parse(f"{reg.host}/engineering/inference:ecr")
        stats = push_stage(session_store, layout, "essentials", target, RegistryClient(reg.host, credentials=creds))
        doc = json.loads(layout.blob(layout.resolve("essentials")["digest"]).read_bytes())
        assert stats.blobs_uploaded == len(doc["layers"]) + 1 and stats.bytes_uploaded > 1_000_000
    finally:
        reg.stop()


def test_ecr_without_reachable_endpoint_says_so(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_ECR", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(AuthError, match="ECR token for 123456789012"):
        credentials_for(ECR_HOST)


def test_docker_config_lookup(tmp_path, monkeypatch):
    write_docker_config(tmp_path, "reg.example:5000", "u", "p:with:colons")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    c = docker_config_credentials("reg.example:5000")
    assert (c.username, c.password) == ("u", "p:with:colons")
    assert docker_config_credentials("other.example") is None
    (tmp_path / "config.json").write_text('{"auths": {"reg.example:5000": {"auth": "!!!"}}}')
    with pytest.raises(AuthError, match="not base64"):
        docker_config_credentials("reg.example:5000")


def test_parse_bearer_challenge():
    scheme, p = parse_challenge('Bearer realm="https://auth.example/token",service="registry.example",'
                                'scope="repository:a/b:pull,push"')
    assert scheme == "bearer"
    assert p == {"realm": "https://auth.example/token", "service": "registry.example",
                 "scope": "repository:a/b:pull,push"}


def test_bearer_token_flow_against_token_auth_registry(small_build, session_store, tmp_path, monkeypatch):
    """docker-registry in `auth: token` mode + a real RS256 token issuer: 401 -> token -> push works;
    a cross-repo mount asks for both repositories' scopes; wrong credentials -> clear error."""
    from token_server import TokenServer

    tokens = TokenServer(tmp_path / "tok", "builder", "t0ken-pw")
    reg = Registry(tmp_path / "reg", auth=tokens.registry_auth())
    try:
        cfg, results = small_build
        layout = Layout(cfg.path(cfg.images.out_dir) / "oci")
        write_docker_config(tmp_path / "dc", reg.host, "builder", "t0ken-pw")
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "dc"))
        s1 = push_stage(session_store, layout, "server", Reference.parse(f"{reg.host}/a/server:v1"))
        assert s1.blobs_uploaded >= 3 and tokens.requests >= 1
        s2 = push_stage(session_store, layout, "server", Reference.parse(f"{reg.host}/b/server:v1"))
        assert s2.blobs_mounted == s1.blobs_uploaded and s2.blobs_uploaded == 0
        out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--creds", "builder:t0ken-pw",
                              f"docker://{reg.host}/b/server:v1"], capture_output=True, text=True, check=True)
        assert json.loads(out.stdout)["Digest"] == results["server"]["digest"]
        write_docker_config(tmp_path / "dc", reg.host, "builder", "nope")
        with pytest.raises(AuthError, match="token endpoint .* answered 401"):
            push_stage(session_store, layout, "server", Reference.parse(f"{reg.host}/c/server:v1"))
    finally:
        reg.stop()
        tokens.stop()


def test_missing_ecr_repositories_are_named_before_any_upload(moto_ecr):
    """ECR does not create repositories on push: the push checks the stage repositories first (moto's ECR)."""
    import boto3

    from minibuild.image.ecr import require_repositories

    repos = [f"engineering/inference/mini-vllm-{s}" for s in ("essentials", "cuda", "server")]
    with pytest.raises(AuthError, match=r"ECR repository engineering/inference/mini-vllm-essentials, .*mini-vllm-server "
                                        r"does not exist .* `aws ecr create-repository --region eu-west-2"):
        require_repositories(ECR_HOST, repos)
    ecr = boto3.client("ecr", region_name="eu-west-2")
    for r in repos[:2]:
        ecr.create_repository(repositoryName=r)
    with pytest.raises(AuthError, match=r"ECR repository engineering/inference/mini-vllm-server does not exist"):
        require_repositories(ECR_HOST, repos)
    ecr.create_repository(repositoryName=repos[2])
    require_repositories(ECR_HOST, repos)                      # all there: no error
    require_repositories("127.0.0.1:5000", repos)              # not ECR: nothing to check
