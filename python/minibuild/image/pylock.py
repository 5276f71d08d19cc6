"""The wheel lock: a PEP 751 `pylock.*.toml` with the URL, size and sha256 of every wheel.

Why this format: a lock that names each wheel's *URL* (not only its hash) lets a build fetch exactly
those files into the store, verify them, and install offline from there - the index is consulted
once, at `invoke image --lock`, never at build time. PEP 751 is the standard shape for that
(`[[packages]]` with `wheels = [{name, url, size, hashes}]`), which uv and pip read as well.

Resolution (`resolve`): `pip install --dry-run --report` for the image's interpreter (Python version,
ABI and manylinux platforms from the profile's `target`), with pip's own configuration switched off
(PIP_CONFIG_FILE=/dev/null) so that nothing but the profile's `index` and `find_links` is looked at.
pip reads PEP 658 metadata from the index, so locking torch's CUDA closure downloads no wheel.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .. import ui
from ..atomic import atomic_write_bytes
from ..config import WheelTarget
from ..store import Store

UNRESOLVED = "# status: unresolved"
_PIP_ENV_DROP = ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT", "PIP_REQUIREMENT",
                 "PIP_NO_INDEX", "PIP_TARGET", "PIP_PREFIX", "PIP_USER")


class WheelLockError(RuntimeError):
    """The wheel lock is missing, unresolved or cannot be fetched/installed as pinned."""


def canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class LockedWheel:
    name: str          # canonical (PEP 503)
    version: str
    filename: str
    url: str
    sha256: str
    size: int

    def requirement(self) -> str:
        return f"{self.name}=={self.version} --hash=sha256:{self.sha256}"


def target_args(target: WheelTarget) -> list[str]:
    """pip's --python-version/--implementation/--abi/--platform for the image's interpreter.

    manylinux platforms are listed from the base's glibc down to 2.17 (pip does not expand a
    `manylinux_2_X` platform downwards itself).
    """
    py = target.python
    abi = "cp" + py.replace(".", "")
    major, minor = (int(x) for x in target.glibc.split("."))
    arch = target.arch
    args = ["--python-version", py, "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none"]
    for m in range(minor, 16, -1):
        args += ["--platform", f"manylinux_{major}_{m}_{arch}"]
    for legacy in ("manylinux2014", "manylinux2010", "manylinux1"):
        args += ["--platform", f"{legacy}_{arch}"]
    return args


def pip_env() -> dict[str, str]:
    """The environment for pip: no user/site configuration, no indexes but the ones we pass."""
    env = {k: v for k, v in os.environ.items() if k not in _PIP_ENV_DROP}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONDONTWRITEBYTECODE="1")
    return env


def index_args(index: str, find_links: Iterable[str]) -> list[str]:
    return ["--index-url", index] + [a for fl in find_links for a in ("--find-links", str(fl))]


def resolve(requirements: Path, target: WheelTarget, index: str, find_links: Iterable[str] = ()) -> list[LockedWheel]:
    """Exact wheels (name, version, URL, sha256, size) for requirements on the target interpreter."""
    with tempfile.TemporaryDirectory(prefix="mvllm-lock-") as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q", "--report", str(report),
               "--only-binary=:all:", "--target", str(Path(tmp) / "t"), "-r", str(requirements),
               *target_args(target), *index_args(index, find_links)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=pip_env())
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-6:])
            raise WheelLockError(f"resolving {requirements} failed:\n{tail}")
        items = json.loads(report.read_text())["install"]
    out = []
    for it in items:
        info = it["download_info"]
        sha = (info.get("archive_info") or {}).get("hashes", {}).get("sha256") or ""
        url = info["url"]
        if not sha:
            raise WheelLockError(f"{url}: the index gave no sha256")
        filename = urllib.parse.unquote(url.rsplit("/", 1)[-1].split("#")[0])
        out.append(LockedWheel(canonical_name(it["metadata"]["name"]), it["metadata"]["version"], filename,
                               url.split("#")[0], sha, _size_of(url)))
    return sorted(out, key=lambda w: w.name)


def _size_of(url: str) -> int:
    if url.startswith("file://"):
        return os.path.getsize(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
    req = urllib.request.Request(url, method="HEAD")
    with urllib.request.urlopen(req, timeout=60) as r:
        return int(r.headers.get("Content-Length") or 0)


def _toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=True)   # a JSON string is a valid TOML basic string


def write(lock_path: Path, wheels: list[LockedWheel], requirements: str, target: WheelTarget, index: str) -> None:
    py = target.python
    lines = [f"# Generated by `invoke image --lock` from {requirements}; do not edit.",
             f"# Target: CPython {py}, glibc {target.glibc}, {target.arch}; index {index}.",
             'lock-version = "1.0"', f"requires-python = {_toml_str('==' + py + '.*')}",
             'created-by = "mini-vllm"', ""]
    for w in wheels:
        lines += ["[[packages]]", f"name = {_toml_str(w.name)}", f"version = {_toml_str(w.version)}",
                  "wheels = [", f"  {{name = {_toml_str(w.filename)}, url = {_toml_str(w.url)}, size = {w.size}, "
                  f"hashes = {{sha256 = {_toml_str(w.sha256)}}}}},", "]", ""]
    atomic_write_bytes(lock_path, "\n".join(lines).encode(), fsync=False)


def read(lock_path: Path) -> list[LockedWheel]:
    try:
        text = lock_path.read_text()
    except FileNotFoundError:
        raise WheelLockError(f"{lock_path} is missing: run `invoke image --lock`") from None
    if text.startswith(UNRESOLVED):
        reason = " ".join(text.splitlines()[1:2]).lstrip("# ")
        raise WheelLockError(f"{lock_path} is marked unresolved ({reason}); resolve it with `invoke image --lock` "
                             "on a machine that reaches its index - the build does not float to unpinned versions")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise WheelLockError(f"{lock_path}: not a pylock TOML file ({exc})") from None
    out = []
    for pkg in doc.get("packages") or []:
        wheels = pkg.get("wheels") or []
        if len(wheels) != 1 or not (wheels[0].get("hashes") or {}).get("sha256"):
            raise WheelLockError(f"{lock_path}: package {pkg.get('name')} must pin exactly one wheel with a sha256")
        w = wheels[0]
        out.append(LockedWheel(canonical_name(pkg["name"]), str(pkg["version"]), w["name"], w["url"],
                               w["hashes"]["sha256"], int(w.get("size") or 0)))
    if not out:
        raise WheelLockError(f"{lock_path}: no packages - not a lock")
    return out


def fetch(store: Store, wheels: list[LockedWheel], timeout: float = 300) -> None:
    """Bring every wheel into the store (by sha256), verified; downloads only what is missing."""
    todo = [w for w in wheels if not store.has_blob(w.sha256)]
    if not todo:
        return
    with ui.transfer(f"wheels: downloading {len(todo)}", sum(w.size for w in todo)) as bar:
        for w in todo:
            h = hashlib.sha256()
            with store.blob_writer() as blob:   # an exception inside discards the temp file
                try:
                    with urllib.request.urlopen(w.url, timeout=timeout) as r:
                        while chunk := r.read(1 << 20):
                            h.update(chunk)
                            blob.write(chunk)
                            bar.advance(len(chunk))
                except OSError as exc:
                    raise WheelLockError(f"{w.filename}: download from {w.url} failed ({exc})") from exc
                if h.hexdigest() != w.sha256:
                    raise WheelLockError(f"{w.filename}: sha256 {h.hexdigest()} does not match the lock's "
                                         f"{w.sha256}; rejected (nothing cached)")


def stage_wheels(store: Store, wheels: list[LockedWheel], dest: Path) -> Path:
    """A find-links directory of the wheels (hard links into the store) + the pinned requirements file."""
    dest.mkdir(parents=True, exist_ok=True)
    for w in wheels:
        src = store.blob_path(w.sha256)
        try:
            os.link(src, dest / w.filename)
        except OSError:
            shutil.copyfile(src, dest / w.filename)
    reqs = dest / "requirements.txt"
    reqs.write_text("".join(w.requirement() + "\n" for w in wheels))
    return reqs

