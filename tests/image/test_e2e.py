"""End to end: build the server image (local profile: Debian base + torch CPU wheels), unpack it with
umoci, and run its `mini-vllm serve` from the unpacked tree (unshare -Urmpf + chroot; crun cannot run
containers on these machines) on the tiny model, bind-mounted in; a completion comes back over HTTP.

This is the slow test (~2 min on 2 cores: the 224 MB wheel layer, unpacking, server start-up).
"""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from image_helpers import free_port, make_checkout
from minibuild.config import load_config
from minibuild.image import build_images

pytestmark = pytest.mark.slow


def _can_unshare() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-Urm", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="user namespaces are not available here")
def test_unpacked_server_image_serves_a_completion(tmp_path, session_store):
    from mini_vllm.model.tiny import write_tiny_checkpoint

    checkout = make_checkout(tmp_path / "repo")
    cfg = load_config(checkout / "build_config.yaml")
    res = build_images(cfg, stage="server", store=session_store, profile="local")
    layout = Path(res["server"]["layout"])
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:server", str(bundle)],
                   check=True, capture_output=True)
    rootfs = bundle / "rootfs"
    process = json.loads((bundle / "config.json").read_text())["process"]
    assert process["args"] == ["mini-vllm", "serve"]

    model = write_tiny_checkpoint(tmp_path / "model")
    (rootfs / "model").mkdir()
    port = free_port()
    inner = ["env", "-i", *process["env"], "chroot", str(rootfs), *process["args"], "/model", "--host", "127.0.0.1",
             "--port", str(port), "--device", "cpu", "--served-model-name", "tiny"]
    script = (f"mount --rbind /dev {rootfs}/dev && mount -t proc proc {rootfs}/proc && "
              f"mount --bind {model} {rootfs}/model && exec "
              + " ".join(shlex.quote(a) for a in inner))
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(["unshare", "-Urmpf", "--kill-child", "sh", "-c", script], stdout=log,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("server from the image did not become healthy: "
                        + (tmp_path / "server.log").read_text()[-3000:])
        from openai import OpenAI

        client = OpenAI(base_url=f"{base}/v1", api_key="unused")
        out = client.completions.create(model="tiny", prompt="Hello from the image", max_tokens=5, temperature=0)
        assert out.choices[0].finish_reason in ("length", "stop")
        assert out.usage.completion_tokens >= 1
        models = httpx.get(f"{base}/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["tiny"]
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
