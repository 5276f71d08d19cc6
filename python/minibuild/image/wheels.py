"""Wheel layers: which locked wheels go into which layer, and installing them for the image.

Why several wheel layers: a push costs the bytes of the layers that changed, and the wheels of an
image change at very different rates - the CUDA libraries (`nvidia-*`, ~3 GB) with a CUDA bump,
torch + triton (~1.5 GB) with a torch bump, the small server dependencies (fastapi, numpy...) often.
images/stages.yaml gives each wheels layer `select:` patterns (PEP 503 names, fnmatch); `assign`
walks the stages' wheels layers in file order and gives each locked wheel to the first layer whose
patterns match it (`"*"` takes the rest), so bumping fastapi re-keys only the small layer.
Every locked wheel must land in exactly one layer, or the build says which one is left over.

Install: the wheels come from the store (fetched once by URL and verified by sha256, pylock.py),
and `pip install --no-index --no-deps --require-hashes --no-compile --only-binary=:all: --target`
for the image's interpreter puts them into a plain directory that becomes the layer - pip itself
checks every hash, no index is consulted, no timestamped .pyc is written.
"""
from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..config import WheelTarget
from ..atomic import atomic_write_bytes
from ..store import Store
from . import pylock
from .pylock import LockedWheel, WheelLockError

__all__ = ["assign", "export_requirements", "install", "lock_wheels", "pip_version", "WheelLockError"]


def wheel_layers(stages: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(stage, layer spec) of every `kind: wheels` layer, in stages.yaml order."""
    return [(s, lay) for s, sdef in stages.items() for lay in (sdef.get("layers") or []) if lay.get("kind") == "wheels"]


def assign(stages: dict[str, Any], lock_key: str, wheels: list[LockedWheel], lock_of: Any) -> dict[str, list[LockedWheel]]:
    """layer name -> its wheels, for the wheels layers that read lock `lock_key` (lock_of(spec) -> key)."""
    left = {w.name: w for w in wheels}
    out: dict[str, list[LockedWheel]] = {}
    for _, spec in wheel_layers(stages):
        if lock_of(spec) != lock_key:
            continue
        patterns = spec.get("select") or ["*"]
        take = sorted(n for n in left if any(fnmatch.fnmatchcase(n, p) for p in patterns))
        out[spec["name"]] = [left.pop(n) for n in take]
    if left:
        raise WheelLockError(f"{lock_key}: no wheels layer in images/stages.yaml selects "
                             f"{', '.join(sorted(left))}; add a pattern (or a layer with select: ['*'])")
    return out


def lock_wheels(requirements: Path, lock_path: Path, target: WheelTarget, index: str,
                find_links: list[str]) -> list[LockedWheel]:
    """Resolve requirements to exact wheels (URL + sha256 + size) and write the pylock file."""
    wheels = pylock.resolve(requirements, target, index, find_links)
    pylock.write(lock_path, wheels, requirements.name, target, index)
    return wheels


def install(store: Store, wheels: list[LockedWheel], dest: Path, target: WheelTarget) -> None:
    """Install exactly these wheels into dest (a fresh directory) for the target interpreter."""
    pylock.fetch(store, wheels)
    with tempfile.TemporaryDirectory(prefix="wheels-", dir=store.tmp) as tmp:
        reqs = pylock.stage_wheels(store, wheels, Path(tmp) / "links")
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(Path(tmp) / "links"),
               "--no-deps", "--no-compile", "--require-hashes", "--only-binary=:all:", "--no-warn-script-location",
               "--target", str(dest), "-r", str(reqs), *pylock.target_args(target)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=pylock.pip_env())
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise WheelLockError(f"installing {len(wheels)} locked wheels failed:\n{tail}")
    # Console scripts carry this machine's interpreter in their #! line: not for the image.
    shutil.rmtree(dest / "bin", ignore_errors=True)


def pip_version() -> str:
    import pip

    return pip.__version__


def export_requirements(locked: list[LockedWheel], dest: Path, source: str) -> None:
    """The lock as a pip requirements file with hashes (for plain `pip install --require-hashes`)."""
    lines = [f"# Exported by `invoke image --lock` from {source} (the lock the image stage uses); do not edit.",
             *(w.requirement() for w in locked)]
    atomic_write_bytes(dest, ("\n".join(lines) + "\n").encode(), fsync=False)
