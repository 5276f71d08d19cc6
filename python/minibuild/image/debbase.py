"""The `local` profile's base layer, made by the project itself from pinned Debian packages.

Why not debootstrap: it needs root, runs maintainer scripts (chroot), takes minutes and is not
reproducible byte for byte. No public container registry is reachable from the build machines, but
Debian's mirror is. So the base is assembled like a package lock: `images/base-local.yaml` names the
packages (python3.11 and the C libraries it and the torch CPU wheel need), `lock_debian_base` resolves
them once with `apt-get download --print-uris` into `images/base-local.lock.json` (URL, version,
size, sha256 - committed), and a build downloads exactly those .debs, rejects any whose sha256 differs
(nothing is cached then), and streams the files out of each package's data.tar straight into a
deterministic layer - no extraction to disk, no root, no maintainer scripts. The .debs live in the
store under their sha256, so a base is made once per lock.
"""
from __future__ import annotations

import io
import json
import subprocess
import tarfile
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import yaml

from ..hashing import digest_bytes
from ..atomic import atomic_write_bytes
from ..store import Store
from .tarlayer import Entry

LOCK_VERSION = 1


class BaseError(RuntimeError):
    """The base cannot be made as pinned (download failed, hash mismatch, bad package)."""


def load_spec(path: Path) -> dict[str, Any]:
    spec = yaml.safe_load(path.read_text()) or {}
    if not isinstance(spec.get("packages"), list) or not spec["packages"]:
        raise BaseError(f"{path}: 'packages' must be a non-empty list")
    return spec


def lock_debian_base(spec_path: Path, lock_path: Path) -> dict[str, Any]:
    """Resolve the spec's packages to exact .deb URLs and sha256 with apt; write the lock file."""
    spec = load_spec(spec_path)
    proc = subprocess.run(["apt-get", "download", "--print-uris", *spec["packages"]],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise BaseError(f"apt-get could not resolve the base packages: {proc.stderr.strip()}")
    pkgs = []
    for line in proc.stdout.splitlines():
        # 'URL' name_version_arch.deb SIZE SHA256:hex
        url, fname, size, sha = line.split()
        name, version, arch = fname[:-4].split("_")
        pkgs.append({"name": name, "version": version.replace("%3a", ":"), "arch": arch,
                     "url": url.strip("'"), "size": int(size), "sha256": sha.split(":", 1)[1].lower()})
    missing = set(spec["packages"]) - {p["name"] for p in pkgs}
    if missing:
        raise BaseError(f"apt-get did not resolve: {', '.join(sorted(missing))}")
    lock = {"version": LOCK_VERSION, "kind": "debian-debs", "suite": spec.get("suite", ""),
            "packages": sorted(pkgs, key=lambda p: p["name"])}
    atomic_write_bytes(lock_path, (json.dumps(lock, indent=1, sort_keys=True) + "\n").encode(), fsync=False)
    return lock


def read_lock(lock_path: Path) -> dict[str, Any]:
    try:
        lock = json.loads(lock_path.read_text())
    except FileNotFoundError:
        raise BaseError(f"{lock_path} is missing: run `invoke image --lock` to resolve the base") from None
    if lock.get("version") != LOCK_VERSION or not lock.get("packages"):
        raise BaseError(f"{lock_path}: not a version-{LOCK_VERSION} base lock with packages")
    return lock


def fetch_debs(store: Store, lock: dict[str, Any], timeout: float = 120) -> dict[str, Path]:
    """name -> verified .deb in the store; downloads only what the store lacks."""
    out: dict[str, Path] = {}
    for p in lock["packages"]:
        if not store.has_blob(p["sha256"]):
            try:
                with urllib.request.urlopen(p["url"], timeout=timeout) as r:
                    data = r.read()
            except OSError as exc:
                raise BaseError(f"{p['name']} {p['version']}: download of {p['url']} failed ({exc}); "
                                "if the mirror dropped this version, re-resolve with `invoke image --lock`") from exc
            got = digest_bytes(data)
            if got != p["sha256"]:
                raise BaseError(f"{p['name']}: sha256 {got} does not match the lock's {p['sha256']}; rejected")
            store.put_bytes(data)
        out[p["name"]] = store.blob_path(p["sha256"])
    return out


def _ar_members(data: bytes) -> Iterator[tuple[str, bytes]]:
    if not data.startswith(b"!<arch>\n"):
        raise BaseError("not a Debian package (ar magic missing)")
    pos = 8
    while pos + 60 <= len(data):
        head = data[pos:pos + 60]
        name = head[:16].decode().strip().rstrip("/")
        size = int(head[48:58].decode().strip())
        yield name, data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)


def deb_entries(deb: Path) -> Iterator[Entry]:
    """Files of one .deb's data.tar as layer entries (modes kept, hard links resolved to copies)."""
    for name, body in _ar_members(deb.read_bytes()):
        if not name.startswith("data.tar"):
            continue
        if name.endswith(".zst"):
            raise BaseError(f"{deb.name}: zstd data members are not supported")
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as t:
            members = t.getmembers()
            by_name = {m.name: m for m in members}
            for m in members:
                path = m.name.removeprefix("./").strip("/")
                if path in ("", "."):
                    continue
                if m.isdir():
                    yield Entry(path, "dir", m.mode)
                elif m.issym():
                    yield Entry(path, "symlink", target=m.linkname)
                elif m.isfile() or m.islnk():
                    src = by_name[m.linkname] if m.islnk() else m
                    f = t.extractfile(src)
                    assert f is not None
                    yield Entry(path, "file", src.mode, data=f.read())
                else:
                    raise BaseError(f"{deb.name}: {m.name} is a device or fifo; refused")
        return
    raise BaseError(f"{deb.name}: no data.tar member")


def base_entries(store: Store, spec: dict[str, Any], lock: dict[str, Any]) -> Iterator[Entry]:
    """All entries of the base layer: packages in lock order, then the spec's dirs and files."""
    debs = fetch_debs(store, lock)
    for p in lock["packages"]:
        yield from deb_entries(debs[p["name"]])
    for path, mode in (spec.get("dirs") or {}).items():
        yield Entry(path, "dir", int(str(mode), 8))
    for path, text in (spec.get("files") or {}).items():
        yield Entry(path, "file", data=str(text).encode())
