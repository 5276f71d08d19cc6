"""Fixtures for the build-engine tests: a tiny project with three CUDA units, and a warm store.

The real nvcc compiles the units for sm_90a. To keep CI short the first build runs once per
session (`warm`); each test gets its own copy of that project + store + install dir, so tests that
edit files or corrupt the store never see each other.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from build_helpers import ROOT, Project, make_project, project_config  # noqa: F401

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
