"""Bad input gets a clear error and leaves nothing behind: tampered locks, unresolved locks."""
from __future__ import annotations

import json

import pytest

from image_helpers import REPO, make_checkout, small_config
from minibuild.image import BaseError, WheelLockError, build_images
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
    checkout = make_checkout(tmp_path / "repo")
    cfg = small_config(checkout, small_lock)
    lock = checkout / "images" / "wheels-small.lock"
    lines = [ln.split("--hash=sha256:")[0] + "--hash=sha256:" + "1" * 64 if "--hash" in ln else ln
             for ln in lock.read_text().splitlines()]
    lock.write_text("\n".join(lines) + "\n")
    store = session_store          # the base layer may come from the session; the wheels must not
    with pytest.raises(WheelLockError, match="installing the wheels of .*wheels-small.lock failed"):
        build_images(cfg, stage="essentials", store=store)
    out = cfg.path(cfg.images.out_dir)
    assert not (out / "essentials.json").exists()
    assert not any(p.name.startswith("wheels-") for p in store.tmp.iterdir())   # temp install dir removed


def test_unresolved_wheel_lock_stops_before_any_work(tmp_path, small_lock):
    checkout = make_checkout(tmp_path / "repo")
    cfg = small_config(checkout, small_lock)
    (checkout / "images" / "wheels-small.lock").write_text("# status: unresolved\n# index not reachable\n")
    store = Store(tmp_path / "s")
    with pytest.raises(WheelLockError, match="marked unresolved .*index not reachable.* does not float"):
        build_images(cfg, stage="essentials", store=store)
    assert list(store.blob_dir.iterdir()) == []


def test_committed_locks_are_pinned():
    base = json.loads((REPO / "images" / "base-local.lock.json").read_text())
    assert all(len(p["sha256"]) == 64 and p["url"].startswith("http") for p in base["packages"])
    wheels = (REPO / "images" / "wheels-cpu.lock").read_text().splitlines()
    reqs = [ln for ln in wheels if ln and not ln.startswith("#")]
    assert reqs and all("==" in ln and "--hash=sha256:" in ln for ln in reqs)
    assert any(ln.startswith("torch==2.13.0") for ln in reqs)
