"""Helpers for the build-engine tests (a small project with real .cu files, its config, nvcc marker).

Kept out of conftest.py so that test modules import them by a unique name.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))

UNITS = {
    "k/a.cu": '#include "common.h"\n__global__ void ka(float* x) { x[threadIdx.x] *= SCALE; }\n'
              'extern "C" void run_a(float* x) { ka<<<1, 32>>>(x); }\n',
    "k/b.cu": '#include "common.h"\n__global__ void kb(float* x) { x[threadIdx.x] += SCALE; }\n'
              'extern "C" void run_b(float* x) { kb<<<1, 32>>>(x); }\n',
    "k/c.cu": '#include "own.h"\n__global__ void kc(float* x) { x[threadIdx.x] = OWN; }\n'
              'extern "C" void run_c(float* x) { kc<<<1, 32>>>(x); }\n',
    "k/include/common.h": "#pragma once\n#define SCALE 2.0f\n",
    "k/include/own.h": "#pragma once\n#define OWN 1.0f\n",
}


def config_with(root: Path, **sections: Any) -> Any:
    """The checkout's build_config.yaml with `sections` replaced, rooted at `root` (environment applied now)."""
    from minibuild.config import parse_config, read_document

    return parse_config({**read_document(ROOT / "build_config.yaml"), **sections}, root)


def project_config(root: Path, store: Path, flags: list[str] | None = None, pins: dict[str, Any] | None = None,
                   **tiny: Any) -> Any:
    """The small project's config: one kernel set `tiny` (its keys overridden by `tiny`), `pins` as sources."""
    return config_with(
        root,
        store={"local": str(store), "remote": None},
        sources=pins or {},
        toolchain={"nvcc": "nvcc", "arch": "sm_90a", "mem_reserve_gb": 0.5},
        kernels={"tiny": {
            "sources": ["k/a.cu", "k/b.cu", "k/c.cu"], "include_dirs": ["k/include"], "defines": ["NDEBUG"],
            "flags": flags or ["-O2", "-std=c++17", "-Xcompiler=-fPIC"],
            "gencode": ["arch=compute_90a,code=sm_90a"], "uses_torch": False, "mem_gb_per_job": 0.5,
            "module": "tiny_kernels", "link_flags": ["-cudart=static"], **tiny}},
    )


@dataclass
class Project:
    root: Path
    store: Path
    ext: Path

    def cfg(self, **kw: Any) -> Any:
        return project_config(self.root, self.store, **kw)

    def events(self, kind: str = "compile") -> list[dict[str, Any]]:
        p = self.store / "events.log"
        if not p.exists():
            return []
        return [e for e in map(json.loads, p.read_text().splitlines()) if e["event"] == kind]

    def clear_events(self) -> None:
        (self.store / "events.log").unlink(missing_ok=True)

    def build(self, **kw: Any) -> bool:
        from minibuild.kernels import build_kernels

        cfg = kw.pop("cfg", None) or self.cfg()
        return build_kernels(cfg, **kw)

    def write(self, rel: str, text: str) -> None:
        p = self.root / rel
        p.write_text(text)
        st = p.stat()  # make sure the change is visible to a stat cache even within one clock tick
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))

    def manifest(self) -> dict[str, Any]:
        return json.loads((self.ext / "manifest.json").read_text())


def make_project(base: Path) -> Project:
    root = base / "proj"
    for rel, text in UNITS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return Project(root, base / "store", base / "ext")


needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
