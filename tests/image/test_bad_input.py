"""Bad input gets a clear error and leaves nothing behind: tampered locks, unresolved locks."""
from __future__ import annotations

import json
import re
import tomllib

import pytest

from image_helpers import REPO, make_checkout, small_config
from minibuild.image import BaseError, WheelLockError, build_images
from minibuild.config import load_config
from minibuild.image import pylock
from minibuild.image.debbase import fetch_debs, read_lock
from minibuild.store import Store


def test_deb_with_other_bytes_is_rejected_and_not_cached(tmp_path):
    lock = read_lock(REPO / "images" / "base-local.lock.json")
    smallest = min(lock["packages"], key=lambda p: p["size"])
    bad = {**lock, "packages": [{**smallest, "sha256": "0" * 64}]}
    store = Store(tmp_path / "s")
    with pytest.raises(BaseError, match=f"{smallest['name']}: sha256 .* does not match the lock's 0000"):
        fetch_debs(store, bad)
    assert list(store.blob_dir.iterdir()) == []          # nothing cached


def test_tampered_wheel_hash_fails_the_build_without_a_layer(tmp_path, small_lock, session_store):
    """A lock whose sha256 for pyyaml is not the wheel's: the download is rejected, nothing is cached,
    no result file and no temp dir are left."""
    checkout = make_checkout(tmp_path / "repo")
    cfg = small_config(checkout, small_lock)
    lock = checkout / "images" / "pylock.small.toml"
    text = lock.read_text()
    good = re.search(r'name = "pyyaml".*?sha256 = "([0-9a-f]{64})"', text, re.S)[1]
    lock.write_text(text.replace(good, "1" * 64))
    store = Store(tmp_path / "s")
    with pytest.raises(WheelLockError, match="pyyaml.*sha256 .* does not match the lock's 1111.*nothing cached"):
        build_images(cfg, stage="essentials", store=store)
    out = cfg.path(cfg.images.out_dir)
    assert not (out / "essentials.json").exists()
    assert not store.has_blob(good) and not store.has_blob("1" * 64)
    assert not any(p.name.startswith("wheels-") for p in store.tmp.iterdir())   # temp install dir removed


def test_unresolved_wheel_lock_stops_before_any_work(tmp_path, small_lock):
    checkout = make_checkout(tmp_path / "repo")
    cfg = small_config(checkout, small_lock)
    (checkout / "images" / "pylock.small.toml").write_text("# status: unresolved\n# index not reachable\n")
    store = Store(tmp_path / "s")
    with pytest.raises(WheelLockError, match="marked unresolved .*index not reachable.* does not float"):
        build_images(cfg, stage="essentials", store=store)
    assert list(store.blob_dir.iterdir()) == []


def test_a_wheel_no_layer_selects_is_named(tmp_path, small_lock):
    checkout = make_checkout(tmp_path / "repo")
    cfg = small_config(checkout, small_lock)
    stages = checkout / "images" / "stages.yaml"
    stages.write_text(stages.read_text().replace('select: ["*"]', 'select: ["numpy"]'))
    with pytest.raises(WheelLockError, match="no wheels layer .* selects pyyaml"):
        build_images(cfg, stage="essentials", store=Store(tmp_path / "s"))


@pytest.mark.parametrize("profile", ["local", "h100"])
def test_committed_locks_are_pinned(profile):
    prof = load_config(REPO / "build_config.yaml").images.profiles[profile]
    base = json.loads((REPO / prof.base.lock).read_text())
    assert all(len(p["sha256"]) == 64 and p["url"].startswith("http") for p in base["packages"])
    wheels = {w.name: w for w in pylock.read(REPO / prof.wheels.lock)}
    assert all(len(w.sha256) == 64 and w.size > 0 and w.filename in w.url.replace("%2B", "+") for w in wheels.values())
    if profile == "h100":                       # the CUDA build of torch with its CUDA libraries, from PyPI
        assert wheels["torch"].version == "2.11.0" and "cp313-cp313-manylinux" in wheels["torch"].filename
        assert {"nvidia-cublas", "nvidia-cudnn-cu13", "nvidia-nccl-cu13", "nvidia-cuda-runtime", "triton"} <= set(wheels)
        assert all(w.url.startswith("https://files.pythonhosted.org/") for w in wheels.values())
        assert {p["name"] for p in base["packages"]} >= {"python3.13", "gcc", "libc6-dev", "libpython3.13-dev",
                                                         "ca-certificates", "libc-bin"}


def _pep503(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.parametrize("profile", ["local", "h100"])
def test_requirements_and_locks_cover_the_server_dependencies(profile):
    """Every dependency pyproject.toml gives the server is in the profile's requirements, and every
    requirement is in its committed lock (a lock left behind by an edit of the .in file fails here)."""
    doc = tomllib.loads((REPO / "pyproject.toml").read_text())
    need = {_pep503(re.split(r"[<>=!~ \[]", d)[0]) for d in doc["project"]["dependencies"]
            + doc["project"]["optional-dependencies"]["server"]}
    wheels = load_config(REPO / "build_config.yaml").images.profiles[profile].wheels
    have = {_pep503(re.split(r"[<>=!~ ]", ln)[0]) for ln in (REPO / wheels.requirements).read_text().splitlines()
            if ln.strip() and not ln.startswith("#")}
    assert need <= have, f"{wheels.requirements} lacks {sorted(need - have)}"
    locked = {_pep503(w.name) for w in pylock.read(REPO / wheels.lock)}
    assert have <= locked, f"{wheels.lock} lacks {sorted(have - locked)}: run `invoke image --lock --profile {profile}`"
