"""S3 remote cache and s3:// source mirror against moto's S3 server on 127.0.0.1 (AWS is not reached):
a second machine (an empty local store) reads everything through and compiles nothing."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from build_helpers import config_with, make_project, needs_nvcc

MOTO = Path(sys.executable).parent / "moto_server"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    if not MOTO.exists():
        pytest.skip("moto_server not installed")
    port = _free_port()
    proc = subprocess.Popen([str(MOTO), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def aws(s3: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    from minibuild.remote import s3_client

    bucket = f"cache-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    s3_client().create_bucket(Bucket=bucket)
    return bucket


@needs_nvcc
@pytest.mark.needs_nvcc
def test_remote_cache_round_trip(aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    remote = f"s3://{aws}/mini-vllm"
    monkeypatch.setenv("MINI_VLLM_REMOTE_CACHE", remote)
    a = make_project(tmp_path / "a")
    monkeypatch.setenv("MINI_VLLM_CACHE", str(a.store))
    monkeypatch.setenv("MINI_VLLM_EXT_DIR", str(a.ext))
    assert a.build()
    assert len(a.events("compile")) == 3
    # "second machine": another checkout path, an empty local store, the same remote
    b = make_project(tmp_path / "b")
    monkeypatch.setenv("MINI_VLLM_CACHE", str(b.store))
    monkeypatch.setenv("MINI_VLLM_EXT_DIR", str(b.ext))
    assert b.build()
    assert b.events("compile") == [] and b.events("link") == []
    assert b.events("remote_hit")
    assert b.manifest()["tiny_kernels"]["sha256"] == a.manifest()["tiny_kernels"]["sha256"]
    assert (b.ext / "tiny_kernels.so").read_bytes() == (a.ext / "tiny_kernels.so").read_bytes()


def test_remote_blob_that_fails_verification_is_ignored(aws: str, tmp_path: Path) -> None:
    from minibuild.hashing import digest_bytes
    from minibuild.remote import S3Remote, s3_client
    from minibuild.store import MissingBlob, Store

    good = Store(tmp_path / "one", remote=S3Remote(f"s3://{aws}/p"))
    d = good.put_bytes(b"payload")
    assert digest_bytes(b"payload") == d
    s3_client().put_object(Bucket=aws, Key=f"p/blobs/sha256/{d}", Body=b"tampered")
    other = Store(tmp_path / "two", remote=S3Remote(f"s3://{aws}/p"))
    with pytest.raises(MissingBlob):
        other.blob_path(d)
    assert not other.has_blob(d)


def test_s3_source_mirror(aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from minibuild.hashing import tree_hash
    from minibuild.remote import s3_client
    from minibuild.sources import fetch_all

    src = tmp_path / "src"
    (src / "include").mkdir(parents=True)
    (src / "include/x.h").write_text("#define X 1\n")
    tarball = tmp_path / "x.tar"
    subprocess.run(["tar", "-cf", str(tarball), "-C", str(src), "include"], check=True)
    s3_client().upload_file(str(tarball), aws, "mirror/x.tar")
    monkeypatch.setenv("MINI_VLLM_CACHE", str(tmp_path / "store"))
    cfg = config_with(tmp_path, sources={"x": {"commit": "c0ffee", "subtrees": ["include"],
                                               "tree_sha256": tree_hash(src), "mirrors": [f"s3://{aws}/mirror/x.tar"]}})
    assert tree_hash(fetch_all(cfg)["x"]) == tree_hash(src)
