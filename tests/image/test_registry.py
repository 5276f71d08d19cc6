"""Push to a real docker-registry and read the result back with skopeo and umoci."""
from __future__ import annotations

import json
import subprocess

import pytest

from minibuild.config import Config
from minibuild.image import AuthError, push_stage
from minibuild.image.oci import Layout
from minibuild.image.registry import Reference, RegistryClient
from minibuild.store import Store

from image_helpers import small_config, write_docker_config


def _layout(cfg: Config) -> Layout:
    return Layout(cfg.path(cfg.images.out_dir) / "oci")


def test_push_skopeo_umoci_and_second_push_uploads_nothing(small_build, registry, session_store, tmp_path):
    cfg, results = small_build
    layout = _layout(cfg)
    target = Reference.parse(f"{registry.host}/mini-vllm/server:v1")
    first = push_stage(session_store, layout, "server", target, RegistryClient(registry.host))
    manifest = json.loads(layout.blob(results["server"]["digest"]).read_bytes())
    assert first.blobs_uploaded == len(manifest["layers"]) + 1           # layers + config
    assert first.bytes_uploaded == sum(d["size"] for d in manifest["layers"]) + manifest["config"]["size"]

    # skopeo reads what we pushed: same digest, our labels, our layers.
    info = json.loads(subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{target.host}/"
                                      f"{target.repo}:v1"], capture_output=True, text=True, check=True).stdout)
    assert info["Digest"] == results["server"]["digest"]
    assert info["Labels"]["io.mini-vllm.stage"] == "server"
    assert info["Layers"] == [d["digest"] for d in manifest["layers"]]

    # skopeo copy back to a layout, umoci unpacks it: the files and the config are ours.
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{target.host}/{target.repo}:v1",
                    f"oci:{tmp_path}/copy:v1"], capture_output=True, check=True)
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{tmp_path}/copy:v1", str(tmp_path / "bundle")],
                   capture_output=True, check=True)
    rootfs = tmp_path / "bundle" / "rootfs"
    site = rootfs / cfg.images.profiles["local"].site_packages
    assert (site / "mini_vllm" / "cli.py").read_bytes() == (cfg.root / "python/mini_vllm/cli.py").read_bytes()
    assert (site / "yaml" / "__init__.py").is_file()
    assert (rootfs / "usr/local/bin/mini-vllm").read_text().startswith("#!/usr/bin/python3\n")
    assert "mini-vllm:x:1000:1000:" in (rootfs / "etc/passwd").read_text()
    rt = json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert rt["process"]["args"] == ["mini-vllm", "serve"]
    assert rt["process"]["user"]["uid"] == 1000
    assert "MINI_VLLM_EXT_DIR=/opt/mini-vllm/ext" in rt["process"]["env"]

    # Second push of the same image: every blob is already there, nothing is uploaded.
    second = push_stage(session_store, layout, "server", target, RegistryClient(registry.host))
    assert (second.blobs_uploaded, second.bytes_uploaded) == (0, 0)
    assert second.blobs_present == len(manifest["layers"]) + 1

    # Another repository of the same registry: blobs are mounted, not uploaded.
    other = Reference.parse(f"{registry.host}/team-b/server:v1")
    third = push_stage(session_store, layout, "server", other, RegistryClient(registry.host))
    assert third.blobs_uploaded == 0 and third.blobs_mounted == len(manifest["layers"]) + 1
    info_b = json.loads(subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{other.host}/"
                                        f"{other.repo}:v1"], capture_output=True, text=True, check=True).stdout)
    assert info_b["Digest"] == results["server"]["digest"]


def test_push_through_build_images_puts_each_stage_in_its_own_repository(small_build, registry, session_store):
    """--push REGISTRY/NAMESPACE:TAG: every stage of the chain goes to NAMESPACE/{prefix}{stage}:TAG, bottom-up;
    the upper stage mounts the lower layers from the lower repository and uploads only its own layer + config."""
    from minibuild.image import build_images

    cfg, _ = small_build
    prefix = cfg.registry.prefix
    res = build_images(cfg, stage="cuda", push=f"{registry.host}/team:t1", store=session_store)
    for stage in ("essentials", "cuda"):
        ref = res[stage]["reference"]
        assert ref == f"{registry.host}/team/{prefix}{stage}@{res[stage]['digest']}"
        written = json.loads((cfg.path(cfg.images.out_dir) / f"{stage}.json").read_text())
        assert written["reference"] == ref and written["digest"] == res[stage]["digest"]
        info = json.loads(subprocess.run(["skopeo", "inspect", "--tls-verify=false",
                                          f"docker://{registry.host}/team/{prefix}{stage}:t1"],
                                         capture_output=True, text=True, check=True).stdout)
        assert info["Digest"] == res[stage]["digest"]            # the tag names the same image
    ess, cuda = res["_push"]["essentials"], res["_push"]["cuda"]
    n_ess = len(json.loads(_layout(cfg).blob(res["essentials"]["digest"]).read_bytes())["layers"])
    assert ess["blobs_uploaded"] == n_ess + 1
    assert cuda["blobs_mounted"] == n_ess and cuda["blobs_uploaded"] == 2    # its ext layer + its config


def test_htpasswd_registry_needs_credentials(small_build, auth_registry, session_store, tmp_path, monkeypatch):
    cfg, results = small_build
    layout = _layout(cfg)
    target = Reference.parse(f"{auth_registry.host}/private/server:v1")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-config"))
    with pytest.raises(AuthError, match="requires credentials"):
        push_stage(session_store, layout, "server", target)

    write_docker_config(tmp_path / "bad", auth_registry.host, "builder", "wrong")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "bad"))
    with pytest.raises(AuthError, match="401") as exc:
        push_stage(session_store, layout, "server", target)
    assert "wrong" not in str(exc.value)           # the password never reaches a message

    write_docker_config(tmp_path / "good", auth_registry.host, "builder", "s3cret-pw")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "good"))
    stats = push_stage(session_store, layout, "server", target)
    assert stats.blobs_uploaded > 0
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--creds", "builder:s3cret-pw",
                          f"docker://{target.host}/{target.repo}:v1"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["Digest"] == results["server"]["digest"]


def test_registry_base_is_locked_by_digest_and_pulled(small_build, small_lock, registry, session_store, tmp_path):
    """A profile whose base is a registry image: `--lock` pins the tag's digest; the build pulls exactly
    that (verified) and stacks the wheel layer on the base's own layers and Env."""
    from minibuild.image import build_images, lock_images
    from minibuild.image.pull import PullError

    cfg, results = small_build
    layout = _layout(cfg)
    base_ref = f"{registry.host}/bases/debian:1"
    push_stage(session_store, layout, "essentials", Reference.parse(base_ref), RegistryClient(registry.host))
    cfg2 = small_config(cfg.root, small_lock,
                        reg={"base": {"kind": "registry", "ref": base_ref, "lock": "images/base-reg.lock.json"}})
    lock_path = cfg.root / "images" / "base-reg.lock.json"
    lock_path.write_text('{"version": 1, "kind": "registry", "ref": "%s", "status": "unresolved: test"}' % base_ref)
    with pytest.raises(PullError, match="unresolved: test"):
        build_images(cfg2, stage="essentials", store=Store(tmp_path / "s"), profile="reg")
    lock_images(cfg2, profile="reg")
    assert json.loads(lock_path.read_text())["digest"] == results["essentials"]["digest"]

    store = Store(tmp_path / "s")
    res = build_images(cfg2, stage="essentials", store=store, profile="reg")
    base_doc = json.loads(layout.blob(results["essentials"]["digest"]).read_bytes())
    new_doc = json.loads(layout.blob(res["essentials"]["digest"]).read_bytes())
    assert [d["digest"] for d in new_doc["layers"]] == [d["digest"] for d in base_doc["layers"]] + \
        [d["digest"] for d in base_doc["layers"][1:]]   # the base's own layers, then our (same) wheel layers
    cfg_doc = json.loads(layout.blob(new_doc["config"]["digest"]).read_bytes())
    assert any(e.startswith("PATH=") for e in cfg_doc["config"]["Env"])
