"""invoke kernels end to end with the real nvcc (sm_90a) on a three-unit project: caching, explain,
header tracking, concurrency, crash safety, corruption. Nothing CUDA *runs* here; modules are checked
as ELF shared objects exporting the expected symbols."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from build_helpers import ROOT, Project, needs_nvcc

pytestmark = [needs_nvcc, pytest.mark.needs_nvcc]


def exported(so: Path) -> set[str]:
    out = subprocess.run(["nm", "-D", "--defined-only", str(so)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def test_cold_build_installs_module_with_manifest(warm: Project) -> None:
    so = warm.ext / "tiny_kernels.so"
    assert {"run_a", "run_b", "run_c"} <= exported(so)
    m = warm.manifest()["tiny_kernels"]
    from minibuild.hashing import digest_file

    assert m["sha256"] == digest_file(so)
    assert [o["unit"] for o in m["objects"]] == ["k/a.cu", "k/b.cu", "k/c.cu"]
    assert len(warm.events("compile")) == 3 and len(warm.events("link")) == 1


def test_second_run_is_a_noop_even_from_another_directory(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    # `project` is a copy in a different directory: keys hold logical paths, so nothing rebuilds
    assert project.build()
    assert project.events("compile") == [] and project.events("link") == []
    assert "nothing to do" in capsys.readouterr().err


def test_one_file_change_rebuilds_one_object_and_relinks(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    before = project.manifest()["tiny_kernels"]
    project.write("k/a.cu", (project.root / "k/a.cu").read_text().replace("*= SCALE", "*= SCALE * 3.0f"))
    assert project.build(explain=True)
    assert [e["unit"] for e in project.events("compile")] == ["k/a.cu"]
    assert len(project.events("link")) == 1
    out = capsys.readouterr().out
    assert "k/a.cu content changed" in out
    assert "input object k/a.cu rebuilt" in out
    after = project.manifest()["tiny_kernels"]
    assert after["sha256"] != before["sha256"]
    assert [o["sha256"] for o in after["objects"]][1:] == [o["sha256"] for o in before["objects"]][1:]


def test_header_change_rebuilds_only_its_includers(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    project.write("k/include/common.h", "#pragma once\n#define SCALE 4.0f\n")
    assert project.build(explain=True)
    assert sorted(e["unit"] for e in project.events("compile")) == ["k/a.cu", "k/b.cu"]
    assert "header k/include/common.h content changed" in capsys.readouterr().out
    # changing it back hits the cache again (the old objects are still there)
    project.clear_events()
    project.write("k/include/common.h", "#pragma once\n#define SCALE 2.0f\n")
    assert project.build()
    assert project.events("compile") == []


def test_new_include_is_tracked(project: Project) -> None:
    project.write("k/include/extra.h", "#pragma once\n#define EXTRA 5.0f\n")
    project.write("k/c.cu", '#include "own.h"\n#include "extra.h"\n__global__ void kc(float* x) '
                  '{ x[threadIdx.x] = OWN + EXTRA; }\nextern "C" void run_c(float* x) { kc<<<1, 32>>>(x); }\n')
    assert project.build()
    project.clear_events()
    project.write("k/include/extra.h", "#pragma once\n#define EXTRA 6.0f\n")
    assert project.build()
    assert [e["unit"] for e in project.events("compile")] == ["k/c.cu"]


def test_flag_change_explained_and_dry_run_runs_nothing(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = project.cfg(flags=["-O3", "-std=c++17", "-Xcompiler=-fPIC"])
    assert project.build(cfg=cfg, dry_run=True)
    out = capsys.readouterr().out
    assert out.count("would compile") == 3 and "flag -O2 -> -O3" in out and "would link tiny_kernels" in out
    assert project.events("compile") == []
    assert project.build(cfg=cfg, explain=True)
    assert "flag -O2 -> -O3" in capsys.readouterr().out
    assert len(project.events("compile")) == 3


def test_toolchain_change_is_explained(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    from minibuild import toolchain

    real = toolchain.detect

    def fake(cfg, store=None):  # type: ignore[no-untyped-def]
        tc = real(cfg, store)
        return toolchain.Toolchain(tc.nvcc, "13.1.0", tc.host_cc, tc.host_version, tc.arch)

    import minibuild.kernels as k

    k.detect = fake  # type: ignore[assignment]
    try:
        assert project.build(dry_run=True)
    finally:
        k.detect = real  # type: ignore[assignment]
    out = capsys.readouterr().out
    assert out.count("would compile") == 3 and "toolchain nvcc 13.0." in out and "-> 13.1.0" in out


def _build_cmd(proj: Project) -> list[str]:
    code = ("import sys, json; sys.path[:0] = [%r, %r]\n"
            "from build_helpers import project_config\nfrom pathlib import Path\n"
            "from minibuild.kernels import build_kernels\n"
            "sys.exit(0 if build_kernels(project_config(Path(%r), Path(%r)), jobs=2) else 1)\n"
            % (str(ROOT / "python"), str(Path(__file__).parent), str(proj.root), str(proj.store)))
    return [sys.executable, "-c", code]


def test_two_concurrent_builds_compile_each_object_once(cold: Project) -> None:
    env = {**os.environ}
    procs = [subprocess.Popen(_build_cmd(cold), env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    units = sorted(e["unit"] for e in cold.events("compile"))
    assert units == ["k/a.cu", "k/b.cu", "k/c.cu"]
    assert len(cold.events("link")) == 1
    assert {"run_a", "run_b", "run_c"} <= exported(cold.ext / "tiny_kernels.so")


def test_sigkill_mid_build_leaves_nothing_trusted(cold: Project) -> None:
    p = subprocess.Popen(_build_cmd(cold), env={**os.environ}, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not cold.events("compile_start"):
        time.sleep(0.05)
    time.sleep(0.3)
    p.send_signal(signal.SIGKILL)
    p.wait()
    from minibuild.hashing import digest_file

    if (cold.ext / "tiny_kernels.so").exists():  # killed after install: then it is complete
        assert cold.manifest()["tiny_kernels"]["sha256"] == digest_file(cold.ext / "tiny_kernels.so")
    assert cold.build()

    m = cold.manifest()["tiny_kernels"]
    assert m["sha256"] == digest_file(cold.ext / "tiny_kernels.so")
    assert {"run_a", "run_b", "run_c"} <= exported(cold.ext / "tiny_kernels.so")
    # every action record points at an intact blob; leftovers are only .tmp-* files
    for rec_file in (cold.store / "ac").glob("*/*.json"):
        for d in json.loads(rec_file.read_text())["record"].get("blobs", []):
            assert digest_file(cold.store / "blobs" / "sha256" / d) == d


def test_corrupt_object_blob_is_detected_and_rebuilt(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    obj = project.manifest()["tiny_kernels"]["objects"][2]["sha256"]
    blob = project.store / "blobs" / "sha256" / obj
    blob.chmod(0o644)
    blob.write_bytes(b"\x7fELF garbage")
    assert project.build()
    assert "corrupt blob" in capsys.readouterr().err
    assert [e["unit"] for e in project.events("compile")] == ["k/c.cu"]
    assert project.events("corrupt")
    assert {"run_a", "run_b", "run_c"} <= exported(project.ext / "tiny_kernels.so")


def test_corrupt_action_record_and_tampered_install_are_repaired(project: Project,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    rec = next((project.store / "ac").glob("*/*.json"))
    rec.write_text(rec.read_text().replace('"v": 1', '"v": 1, "x": 0')[:-20])
    (project.ext / "tiny_kernels.so").write_bytes(b"not a module")
    assert project.build()
    assert "corrupt action record" in capsys.readouterr().err
    assert {"run_a", "run_b", "run_c"} <= exported(project.ext / "tiny_kernels.so")


def test_compile_error_reports_and_installs_nothing(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    before = (project.ext / "tiny_kernels.so").read_bytes()
    project.write("k/b.cu", "this is not C++\n")
    assert not project.build()
    err = capsys.readouterr().err
    assert "k/b.cu: nvcc failed" in err
    assert (project.ext / "tiny_kernels.so").read_bytes() == before


def test_gc_keeps_current_build(project: Project) -> None:
    from minibuild.cache_cmd import collect_garbage
    from minibuild.store import Store

    project.write("k/a.cu", (project.root / "k/a.cu").read_text() + "// v2\n")
    assert project.build()
    removed = collect_garbage(Store(project.store))
    assert removed["blobs"] >= 2  # the old a.cu object and the old module
    project.clear_events()
    assert project.build()
    assert project.events("compile") == [] and project.events("link") == []


def test_runtime_limits_go_into_the_manifest_without_a_rebuild(project: Project) -> None:
    """kernels.<set>.runtime is data for the server: written beside the module, no compile or link for it."""
    assert project.manifest()["tiny_kernels"]["runtime"] == {}
    assert project.build(cfg=project.cfg(runtime={"head_dim": 64, "dtype": "bfloat16"}))
    assert project.manifest()["tiny_kernels"]["runtime"] == {"head_dim": 64, "dtype": "bfloat16"}
    assert project.events("compile") == [] and project.events("link") == []
