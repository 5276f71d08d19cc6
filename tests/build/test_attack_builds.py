"""A build killed hard (issue 11): `kill -9` of a real `invoke kernels` while the real nvcc runs leaves no
nvcc/cicc/ptxas behind, and the `.tmp-*` leftovers of a build killed mid-write are removed by
`invoke cache --gc`. Both run the project's real `invoke` in a scratch project (tasks.py + this
repository's python/, build_config.yaml with one extra kernel set) on a temp store."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from build_helpers import ROOT, needs_nvcc

INVOKE = Path(sys.executable).parent / "invoke"
COMPILERS = {"nvcc", "cicc", "ptxas", "cudafe++", "gcc", "cc1plus", "fatbinary", "nvlink", "sh"}


def slow_unit(kernels: int) -> str:
    """Generated straight-line kernels, so the compile outlives the test (150 took 24.5 s of nvcc here)."""
    out = []
    for k in range(kernels):
        out.append(f"__global__ void k{k}(float* p) {{ float x = p[threadIdx.x], y = p[threadIdx.x + {k}];")
        out += [f"  x = x * {1 + i * 1e-4:.6f}f + __sinf(y + {i + k}.0f); y = y * 0.9999f + __cosf(x - {i}.0f);"
                for i in range(60)]
        out.append("  p[threadIdx.x] = x + y; }")
    return "\n".join(out) + "\n"


def scratch_project(tmp_path: Path, units: dict[str, str]) -> tuple[Path, dict[str, str]]:
    """A project that `invoke` runs like the real one: our tasks.py and python/, a kernels set of `units`."""
    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copy(ROOT / "tasks.py", proj / "tasks.py")
    (proj / "python").symlink_to(ROOT / "python")
    for rel, text in units.items():
        (proj / rel).parent.mkdir(parents=True, exist_ok=True)
        (proj / rel).write_text(text)
    cfg = yaml.safe_load((ROOT / "build_config.yaml").read_text())
    cfg["kernels"] = {"attack": {"sources": sorted(units), "include_dirs": [], "defines": [], "flags": ["-O2"],
                                 "gencode": ["arch=compute_90a,code=sm_90a"], "uses_torch": False,
                                 "mem_gb_per_job": 0.5, "module": "attack_kernels", "link_flags": []}}
    (proj / "build_config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {**os.environ, "MINI_VLLM_CACHE": str(tmp_path / "store"), "MINI_VLLM_EXT_DIR": str(tmp_path / "ext"),
           "COLUMNS": "200"}
    env.pop("MINI_VLLM_REMOTE_CACHE", None)
    return proj, env


def marked(mark: str) -> dict[int, str]:
    """pid -> command name of every live process whose environment carries `mark`."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if mark.encode() not in (d / "environ").read_bytes():
                continue
            stat = (d / "stat").read_text()
        except OSError:
            continue
        name, state = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2]
        if state != "Z":
            out[int(d.name)] = name
    return out


@needs_nvcc
@pytest.mark.needs_nvcc
def test_sigkill_of_invoke_kernels_leaves_no_compiler(tmp_path: Path) -> None:
    proj, env = scratch_project(tmp_path, {"k/slow.cu": slow_unit(150)})
    mark = f"harden-{uuid.uuid4().hex}"
    env["MINI_VLLM_TEST_MARK"] = mark
    build = subprocess.Popen([str(INVOKE), "kernels", "--jobs", "1"], cwd=proj, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not {"cicc", "ptxas"} & set(marked(mark).values()):
            assert build.poll() is None, "the build ended before its compiler ran"
            time.sleep(0.05)
        seen = marked(mark)
        assert {"cicc", "ptxas"} & set(seen.values()), seen
        build.send_signal(signal.SIGKILL)
        build.wait()
        deadline = time.monotonic() + 5
        while marked(mark) and time.monotonic() < deadline:
            time.sleep(0.05)
        survivors = marked(mark)
        assert not survivors, f"compiler processes outlived the killed build: {survivors} (before the kill: {seen})"
    finally:
        build.kill()
        for pid in marked(mark):       # on failure: do not leave a 7 GB cicc running for the next test
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


_KILL_AT_RENAME = """
import os, signal, sys
sys.argv = ["invoke", "kernels", "--jobs", "1"]
real_replace = os.replace
def replace(src, dst, *a, **k):          # die exactly between writing a temp file and renaming it
    if "{what}" in os.fspath(dst):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *a, **k)
os.replace = replace
from invoke.main import program
program.run()
"""


@needs_nvcc
@pytest.mark.needs_nvcc
def test_gc_removes_tmp_leftovers_of_a_killed_build(tmp_path: Path) -> None:
    proj, env = scratch_project(tmp_path, {"k/a.cu": "__global__ void ka(float* x) { x[0] = 1; }\n"})
    store, ext = tmp_path / "store", tmp_path / "ext"
    # killed while adopting the object (leaves the object's temp in store/build and the blob's temp) ...
    r = subprocess.run([sys.executable, "-c", _KILL_AT_RENAME.format(what="blobs")], cwd=proj, env=env)
    assert r.returncode == -signal.SIGKILL
    # ... and, in a second run, while installing the module into the ext dir
    subprocess.run([sys.executable, "-c", _KILL_AT_RENAME.format(what="attack_kernels.so")], cwd=proj, env=env)

    def leftovers() -> list[Path]:     # (a pinned source tree may hold a file called .tmp-x: not ours)
        return sorted([p for p in store.rglob(".tmp-*") if p.relative_to(store).parts[0] != "trees"]
                      + list(ext.glob(".tmp-*")))
    left = leftovers()
    assert any("build" in p.parts for p in left) and any(p.parent == ext for p in left), left
    r = subprocess.run([str(INVOKE), "cache", "--gc"], cwd=proj, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    n = int(r.stdout.split(" leftovers")[0].rsplit(" ", 1)[1])
    assert n >= len(left) and leftovers() == [], (r.stdout, leftovers())
    ok = subprocess.run([str(INVOKE), "kernels"], cwd=proj, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr


# ---- a pinned tree changed in the store after it was verified ---------------------------------------------
LIB_H = "#pragma once\n__device__ inline float lib_value() { return 2.0f; }\n"


def pinned_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A kernels set compiling k/u.cu against the pinned source `lib` (a tarball mirror made here)."""
    import tarfile

    from build_helpers import Project, project_config
    from minibuild.hashing import tree_hash

    src = tmp_path / "lib-src"
    (src / "include").mkdir(parents=True)
    (src / "include/lib.h").write_text(LIB_H)
    (src / "include/unused.h").write_text("#pragma once\n")
    tarball = tmp_path / "lib.tar.gz"
    with tarfile.open(tarball, "w:gz") as tf:
        tf.add(src / "include", "include")
    proj = Project(tmp_path / "proj", tmp_path / "store", tmp_path / "ext")
    (proj.root / "k").mkdir(parents=True)
    (proj.root / "k/u.cu").write_text('#include "lib.h"\n__global__ void ku(float* x) { x[0] = lib_value(); }\n')
    monkeypatch.setenv("MINI_VLLM_CACHE", str(proj.store))
    monkeypatch.setenv("MINI_VLLM_EXT_DIR", str(proj.ext))
    monkeypatch.delenv("MINI_VLLM_MIRROR", raising=False)

    def cfg(flags: list[str]) -> Any:
        return project_config(proj.root, proj.store, flags,
                              pins={"lib": {"commit": "c0ffee", "subtrees": ["include"], "tree_sha256": tree_hash(src),
                                            "mirrors": [tarball.as_uri()]}},
                              sources=["k/u.cu"], include_dirs=["@lib/include"])
    return proj, cfg, tree_hash(src)


@needs_nvcc
@pytest.mark.needs_nvcc
@pytest.mark.parametrize("tamper", ["content", "added", "symlink", "removed"])
def test_a_tree_changed_after_verification_is_fetched_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str], tamper: str) -> None:
    from minibuild.hashing import tree_hash

    proj, cfg, pinned = pinned_project(tmp_path, monkeypatch)
    assert proj.build(cfg=cfg(["-O2"]))
    tree = next(p for p in (proj.store / "trees").iterdir() if p.is_dir())
    lib = tree / "include/lib.h"
    if tamper == "content":          # nvcc must never see this: the build would fail on it
        lib.write_text("#error the pinned tree was tampered with\n" + LIB_H)
    elif tamper == "added":          # a header that would shadow a system one
        (tree / "include/stdio.h").write_text("#error shadowing header\n")
    elif tamper == "symlink":
        lib.unlink()
        lib.symlink_to("/etc/hostname")
    else:
        (tree / "include/unused.h").unlink()
    capsys.readouterr()
    # a flag change: a new compile key whose header list is not known yet (planning cannot catch it)
    for _ in range(2):               # and it is not a one-off: the next build is clean too
        assert proj.build(cfg=cfg(["-O1"]))
    err = capsys.readouterr().err
    assert err.count("changed after it was verified") == 1 and "fetched lib" in err, err
    assert tree_hash(tree) == pinned
    assert [e["source"] for e in proj.events("corrupt")] == ["lib"]
