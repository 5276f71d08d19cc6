"""End to end: build the server image (local profile: Debian base + torch CPU wheels), unpack it with
umoci, and run its `mini-vllm serve` from the unpacked tree (unshare -Urmpf + chroot; crun cannot run
containers on these machines) on the tiny model, bind-mounted in; a completion comes back over HTTP.

This is the slow test (~2 min on 2 cores: the torch layer, unpacking, server start-up).
"""
from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from image_helpers import free_port, make_checkout
from minibuild.config import load_config
from minibuild.image import build_images
from rootfs_run import can_unshare, serving, unpack

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not can_unshare(), reason="user namespaces are not available here")
def test_unpacked_server_image_serves_a_completion(tmp_path, session_store):
    from mini_vllm.model.tiny import write_tiny_checkpoint

    checkout = make_checkout(tmp_path / "repo")
    cfg = load_config(checkout / "build_config.yaml")
    res = build_images(cfg, stage="server", store=session_store, profile="local")
    rootfs, process = unpack(Path(res["server"]["layout"]), "server", tmp_path / "bundle")
    assert process["args"] == ["mini-vllm", "serve"]
    model = write_tiny_checkpoint(tmp_path / "model")
    with serving(rootfs, process, model, free_port(), tmp_path / "server.log",
                 ["--device", "cpu", "--served-model-name", "tiny"], timeout=180) as base:
        from openai import OpenAI

        client = OpenAI(base_url=f"{base}/v1", api_key="unused")
        out = client.completions.create(model="tiny", prompt="Hello from the image", max_tokens=5, temperature=0)
        assert out.choices[0].finish_reason in ("length", "stop")
        assert out.usage.completion_tokens >= 1
        models = httpx.get(f"{base}/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["tiny"]
