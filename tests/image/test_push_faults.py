"""Pushing over a bad link: a proxy between the client and a real docker-registry drops connections
mid-blob and answers 503; the push still completes, resumes where the registry says it stands, and
the registry holds exactly our bytes (skopeo copies the image back and checks every digest)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from fault_proxy import FaultProxy, Rule
from minibuild.config import Config, PushConfig, UploadLimits
from minibuild.image.oci import Layout
from minibuild.image.push import parse_target, push_stage
from minibuild.image.registry import Reference, RegistryClient, Retry, TransientError
from minibuild.image.upload import MIB, UploadRules
from minibuild.store import Store


def _layout(cfg: Config) -> Layout:
    return Layout(cfg.path(cfg.images.out_dir) / "oci")


def _client(host: str, attempts: int = 6) -> RegistryClient:
    return RegistryClient(host, retry=Retry(attempts, backoff=0.01, backoff_max=0.05))


def _verify_by_copy(host: str, repo: str, tag: str, digest: str, tmp_path: Path) -> None:
    info = json.loads(subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{host}/{repo}:{tag}"],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["Digest"] == digest
    # skopeo copy verifies every blob against its digest on the way
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{host}/{repo}:{tag}",
                    f"oci:{tmp_path}/back:{tag}"], capture_output=True, check=True)


def test_chunked_push_survives_drops_and_503s(small_build, registry, tmp_path):
    cfg, results = small_build
    proxy = FaultProxy(("127.0.0.1", registry.port), rules=[
        Rule("PATCH", 3, "drop", after_bytes=300_000),    # the link dies 0.3 MB into the 3rd chunk
        Rule("PATCH", 6, "503"),                          # the registry has a bad moment
        Rule("PUT", 1, "drop", after_bytes=1000),         # a closing PUT dies too
        Rule("HEAD", 2, "503"),
    ])
    try:
        client = _client(proxy.host)
        rules = UploadRules(chunk=2 * MIB, parallel=3)   # the 20 MB base layer goes up as 2 MiB chunks
        stats = push_stage(Store(tmp_path / "s"), _layout(cfg), "essentials",
                           Reference(proxy.host, "faulty/essentials", "v1"), client, rules)
    finally:
        proxy.close()
    print("STATS", stats, [l for l in proxy.log if l[2] != "ok" or l[0] == "GET"])
    assert proxy.faults("drop") == 2 and proxy.faults("503") == 2
    assert stats.retries >= 4
    doc = json.loads(_layout(cfg).blob(results["essentials"]["digest"]).read_bytes())
    blobs = doc["layers"] + [doc["config"]]
    assert stats.blobs_uploaded == len(blobs)
    assert stats.bytes_uploaded >= sum(d["size"] for d in blobs)
    assert stats.bytes_sent > stats.bytes_uploaded            # the cut-off bytes were sent again
    _verify_by_copy(registry.host, "faulty/essentials", "v1", results["essentials"]["digest"], tmp_path)


def test_503_mid_chunks_resumes_from_the_registrys_offset(small_build, registry, tmp_path):
    """A 503 on a PATCH leaves the session intact: the client asks for its Range and continues there,
    so only that one chunk is sent twice."""
    cfg, results = small_build
    proxy = FaultProxy(("127.0.0.1", registry.port), rules=[Rule("PATCH", 4, "503")])
    layout = _layout(cfg)
    doc = json.loads(layout.blob(results["essentials"]["digest"]).read_bytes())
    try:
        stats = push_stage(Store(tmp_path / "s"), layout, "essentials", Reference(proxy.host, "resume/ess", "v1"),
                           _client(proxy.host), UploadRules(chunk=2 * MIB, parallel=1))
    finally:
        proxy.close()
    total = sum(d["size"] for d in doc["layers"] + [doc["config"]])
    assert stats.retries == 1 and stats.bytes_sent == total + 2 * MIB   # one chunk again, not the blob
    assert any(m == "GET" and "/blobs/uploads/" in p for m, p, _ in proxy.log)
    _verify_by_copy(registry.host, "resume/ess", "v1", results["essentials"]["digest"], tmp_path)


def test_monolithic_upload_restarts_after_a_drop(small_build, registry, tmp_path):
    cfg, results = small_build
    proxy = FaultProxy(("127.0.0.1", registry.port), rules=[Rule("PUT", 1, "drop", after_bytes=5_000_000)])
    try:
        stats = push_stage(Store(tmp_path / "s"), _layout(cfg), "essentials", Reference(proxy.host, "mono/ess", "v1"),
                           _client(proxy.host), UploadRules(chunk=0, parallel=1))   # largest blob first
    finally:
        proxy.close()
    assert proxy.faults("drop") == 1 and stats.retries >= 1
    _verify_by_copy(registry.host, "mono/ess", "v1", results["essentials"]["digest"], tmp_path)


def test_a_registry_that_keeps_failing_gives_a_clear_error(small_build, registry, tmp_path):
    cfg, _ = small_build
    proxy = FaultProxy(("127.0.0.1", registry.port), rules=[Rule("HEAD", n, "503") for n in range(1, 50)])
    try:
        with pytest.raises(TransientError, match=r"HEAD /v2/broken/ess/blobs/sha256:.* failed after 3 attempts "
                                                 r"\(last: 503"):
            push_stage(Store(tmp_path / "s"), _layout(cfg), "essentials", Reference(proxy.host, "broken/ess", "v1"),
                       _client(proxy.host, attempts=2), UploadRules(parallel=1))
    finally:
        proxy.close()


def test_ecr_rules_and_push_targets():
    ecr = "123456789012.dkr.ecr.eu-west-2.amazonaws.com"
    cfg = PushConfig(parallel=4, limits=UploadLimits(64), ecr=UploadLimits(10, 5, 4200))
    r = UploadRules.for_host(ecr, cfg)
    assert (r.chunk, r.min_chunk, r.max_parts) == (10 * MIB, 5 * MIB, 4200)
    assert r.chunk_for(3 * MIB) == 0 and r.chunk_for(3_000 * MIB) == 10 * MIB
    with pytest.raises(Exception, match="more than 4200 parts"):
        r.chunk_for(50_000 * MIB)
    assert UploadRules.for_host("127.0.0.1:5000", cfg).chunk == 64 * MIB

    t = parse_target(f"{ecr}/engineering/inference:v7", "", "mini-vllm-", "abc")
    assert t.reference("server") == Reference(ecr, "engineering/inference/mini-vllm-server", "v7")
    t = parse_target("default", f"{ecr}/engineering/inference", "mini-vllm-", "abc123")
    assert (t.reference("cuda").repo, t.tag) == ("engineering/inference/mini-vllm-cuda", "abc123")
    assert parse_target("127.0.0.1:5000", "", "p-", "t").reference("essentials") == \
        Reference("127.0.0.1:5000", "p-essentials", "t")
    with pytest.raises(ValueError, match="REGISTRY"):
        parse_target("server", "", "p-", "t")


def test_transfer_progress_in_logs_has_rate_and_eta(capsys):
    from minibuild import ui

    bar = ui._LogTransfer("push x: 3 blobs", 300_000_000, every=0.0)
    bar.advance(100_000_000)
    line = bar.line(bar._t0 + 10.0)                      # 100 MB in 10 s
    assert line == "push x: 3 blobs: 100.0 / 300.0 MB, 10.0 MB/s, ETA 20 s"
    assert "MB/s" in capsys.readouterr().err             # advance() logged a line on its own
