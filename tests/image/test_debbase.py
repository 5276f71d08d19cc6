"""The Debian base: apt resolves a trixie closure with a private configuration, the layer keeps trixie's
merged-/usr links, and the dpkg database we write is what dpkg itself reads and verifies."""
from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from minibuild.image import debbase
from minibuild.image.tarlayer import write_layer
from minibuild.store import Store

TRIXIE = {"suite": "trixie", "resolve": "closure",
          "sources": [{"uri": "http://deb.debian.org/debian", "suites": ["trixie"]}],
          "packages": ["base-files", "libc6", "ca-certificates"],
          "dirs": {"tmp": "1777"}, "files": {"etc/passwd": "root:x:0:0:root:/root:/bin/sh\n"},
          "concat": {"etc/ssl/certs/ca-certificates.crt": "usr/share/ca-certificates/mozilla/*.crt"}}


def _unpack(store: Store, digest: str, dest: Path) -> Path:
    dest.mkdir()
    with tarfile.open(store.blob_path(digest), mode="r:gz") as t:
        t.extractall(dest, filter="tar")
    return dest


@pytest.fixture(scope="module")
def trixie_base(tmp_path_factory):
    d = tmp_path_factory.mktemp("trixie")
    (d / "spec.yaml").write_text(yaml.safe_dump(TRIXIE))
    lock = debbase.lock_debian_base(d / "spec.yaml", d / "lock.json")
    store = Store(d / "store")
    layer = write_layer(store, debbase.base_entries(store, TRIXIE, lock))
    return lock, store, layer, _unpack(store, layer.digest, d / "root")


def test_apt_resolves_the_closure_of_another_release_with_sha256(trixie_base):
    lock, *_ = trixie_base
    names = {p["name"] for p in lock["packages"]}
    assert {"base-files", "libc6", "libgcc-s1", "ca-certificates", "openssl"} <= names      # dependencies came
    assert all(len(p["sha256"]) == 64 and "trixie" not in p["version"] for p in lock["packages"])
    assert any("trixie" in s for s in lock["sources"])
    assert json.loads(json.dumps(lock)) == lock


def test_merged_usr_links_stay_links_and_scanners_see_every_package(trixie_base):
    lock, _, _, root = trixie_base
    for top in ("bin", "lib", "lib64", "sbin"):
        assert (root / top).is_symlink() and str((root / top).readlink()) == f"usr/{top}"
    assert (root / "usr/lib64/ld-linux-x86-64.so.2").is_symlink()
    assert "trixie" in (root / "usr/lib/os-release").read_text()
    bundle = (root / "etc/ssl/certs/ca-certificates.crt").read_text()
    assert bundle.count("BEGIN CERTIFICATE") > 100
    # dpkg itself reads our database: every locked package installed, at its locked version
    out = subprocess.run(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f", "${Package} ${Version} ${Status}\n"],
                         capture_output=True, text=True, check=True)
    got = {ln.split()[0]: ln.split()[1] for ln in out.stdout.splitlines()}
    assert got == {p["name"]: p["version"] for p in lock["packages"]}
    assert "install ok installed" in out.stdout and "not-installed" not in out.stdout
    files = subprocess.run(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-L", "libc6"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert "/usr/lib/x86_64-linux-gnu/libc.so.6" in files
    # ... and verifies the files against the packages' md5sums: nothing differs
    verify = subprocess.run(["dpkg", f"--root={root}", "--verify"], capture_output=True, text=True)
    assert verify.returncode == 0 and verify.stdout == "" and "warning" not in verify.stderr


def test_the_local_base_carries_a_dpkg_database(small_build, session_store, tmp_path):
    cfg, res = small_build
    oci = cfg.path(cfg.images.out_dir) / "oci" / "blobs" / "sha256"
    base = json.loads((oci / res["essentials"]["digest"].split(":")[1]).read_bytes())["layers"][0]["digest"]
    root = _unpack(session_store, base.split(":")[1], tmp_path / "root")
    lock = debbase.read_lock(cfg.root / "images" / "base-local.lock.json")
    out = subprocess.run(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f", "${Package}\n"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert sorted(out) == sorted(p["name"] for p in lock["packages"])
    assert "bookworm" in (root / "etc/os-release").read_text()
