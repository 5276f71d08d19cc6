"""A base layer made by the project itself from pinned Debian packages (both profiles).

Why not debootstrap or a registry base: debootstrap needs root, runs maintainer scripts (chroot),
takes minutes and is not reproducible byte for byte; docker.io is not reachable from the build
machines, Debian's mirror is. So the base is assembled like a package lock: `images/base-*.yaml`
names the packages, `lock_debian_base` resolves them once with apt (aptlock.py) into
`images/base-*.lock.json` (URL, version, size, sha256 - committed), and a build downloads exactly
those .debs, rejects any whose sha256 differs (nothing is cached then) and streams the files of
each package's data.tar into a deterministic layer - no extraction to disk, no root, no maintainer
scripts. The .debs live in the store under their sha256, so a base is made once per lock.

What maintainer scripts would have done and a running image needs is done here, as data from the
spec: `dirs` (/tmp 1777 ...), `files` (/etc/passwd ...), `concat` (the CA bundle that
update-ca-certificates would have written) - and the dpkg database (dpkgdb.py), so that scanners
see every package. Merged /usr (trixie's base-files ships /lib -> usr/lib ...): a path a package
ships below such a link is written below its target, as dpkg would resolve it.
"""
from __future__ import annotations

import fnmatch
import json
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import yaml

from .. import ui
from ..atomic import atomic_write_bytes
from ..hashing import digest_bytes
from ..store import Store
from . import aptlock, dpkgdb
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
    try:
        pkgs = aptlock.resolve(spec)
    except aptlock.AptResolveError as exc:
        raise BaseError(f"{spec_path.name}: {exc}") from None
    lock = {"version": LOCK_VERSION, "kind": "debian-debs", "suite": spec.get("suite", ""),
            "sources": aptlock.sources_lines(spec), "packages": pkgs}
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
    todo = [p for p in lock["packages"] if not store.has_blob(p["sha256"])]
    with ui.transfer(f"base: downloading {len(todo)} .debs", sum(p["size"] for p in todo)) as bar:
        for p in todo:
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
            bar.advance(p["size"])
    for p in lock["packages"]:
        out[p["name"]] = store.blob_path(p["sha256"])
    return out


def _remap(path: str, links: dict[str, str]) -> str:
    """'lib/x' -> 'usr/lib/x' when the layer holds the top-level link lib -> usr/lib."""
    top, _, rest = path.partition("/")
    return f"{links[top]}/{rest}" if rest and top in links else path


def base_entries(store: Store, spec: dict[str, Any], lock: dict[str, Any]) -> Iterator[Entry]:
    """All entries of the base layer: packages (base-files first), spec dirs/files/concat, dpkg db."""
    debs = fetch_debs(store, lock)
    order = sorted(lock["packages"], key=lambda p: (p["name"] != "base-files", p["name"]))
    links: dict[str, str] = {}
    globs = {dest: str(pattern) for dest, pattern in (spec.get("concat") or {}).items()}
    collected: dict[str, list[tuple[str, bytes]]] = {dest: [] for dest in globs}
    packages = []
    for p in order:
        try:
            pkg, entries = dpkgdb.read_deb(debs[p["name"]])
        except dpkgdb.DebError as exc:
            raise BaseError(str(exc)) from None
        packages.append(pkg)
        for e in entries:
            if e.kind == "dir" and e.path in links:      # a merged-/usr link stays a link
                continue
            if e.kind == "symlink" and "/" not in e.path and not e.target.startswith("/"):
                links[e.path] = e.target.strip("/")
            path = _remap(e.path, links)
            for dest, pattern in globs.items():
                if e.kind == "file" and fnmatch.fnmatch(path, pattern):
                    collected[dest].append((path, e.data or b""))
            yield Entry(path, e.kind, e.mode, e.src, e.data, e.target, e.owner)
    for path, mode in (spec.get("dirs") or {}).items():
        yield Entry(path, "dir", int(str(mode), 8))
    for path, text in (spec.get("files") or {}).items():
        yield Entry(path, "file", data=str(text).encode())
    for dest, parts in collected.items():
        if not parts:
            raise BaseError(f"concat {dest}: no file of the base matches {globs[dest]!r}")
        yield Entry(dest, "file", data=b"".join(data if data.endswith(b"\n") else data + b"\n"
                                                 for _, data in sorted(parts)))
    yield from dpkgdb.database_entries(packages)
