"""Fixtures for the build-engine tests: a tiny project with three CUDA units, and a warm store.

The real nvcc compiles the units for sm_90a. To keep CI short the first build runs once per
session (`warm`); each test gets its own copy of that project + store + install dir, so tests that
edit files or corrupt the store never see each other.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
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


def project_config(root: Path, store: Path, flags: list[str] | None = None) -> dict[str, Any]:
    return {
        "_root": str(root),
        "store": {"local": str(store), "remote": None},
        "sources": {},
        "toolchain": {"nvcc": "nvcc", "arch": "sm_90a", "mem_reserve_gb": 0.5},
        "kernels": {"tiny": {
            "sources": ["k/a.cu", "k/b.cu", "k/c.cu"], "include_dirs": ["k/include"], "defines": ["NDEBUG"],
            "flags": flags or ["-O2", "-std=c++17", "-Xcompiler=-fPIC"],
            "gencode": ["arch=compute_90a,code=sm_90a"], "uses_torch": False, "mem_gb_per_job": 0.5,
            "module": "tiny_kernels", "link_flags": ["-cudart=static"]}},
    }


@dataclass
class Project:
    root: Path
    store: Path
    ext: Path

    def cfg(self, **kw: Any) -> dict[str, Any]:
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


@pytest.fixture(scope="session")
def warm(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A project built once (three objects, one module)."""
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not installed")
    base = tmp_path_factory.mktemp("warm")
    proj = make_project(base)
    env = {"MINI_VLLM_CACHE": str(proj.store), "MINI_VLLM_EXT_DIR": str(proj.ext)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert proj.build()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return proj


@pytest.fixture
def project(warm: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    """A private copy of the warm project, store and install dir (events log emptied)."""
    for name in ("proj", "store", "ext"):
        subprocess.run(["cp", "-a", str(getattr(warm, "root" if name == "proj" else name)), str(tmp_path / name)],
                       check=True)
    proj = Project(tmp_path / "proj", tmp_path / "store", tmp_path / "ext")
    # the stat cache holds absolute paths of the warm copy; the copy starts without one
    (proj.store / "statcache.json").unlink(missing_ok=True)
    proj.clear_events()
    monkeypatch.setenv("MINI_VLLM_CACHE", str(proj.store))
    monkeypatch.setenv("MINI_VLLM_EXT_DIR", str(proj.ext))
    monkeypatch.delenv("MINI_VLLM_REMOTE_CACHE", raising=False)
    return proj


@pytest.fixture
def cold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not installed")
    proj = make_project(tmp_path)
    monkeypatch.setenv("MINI_VLLM_CACHE", str(proj.store))
    monkeypatch.setenv("MINI_VLLM_EXT_DIR", str(proj.ext))
    monkeypatch.delenv("MINI_VLLM_REMOTE_CACHE", raising=False)
    return proj
