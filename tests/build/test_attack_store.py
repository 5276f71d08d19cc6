"""The store where it cannot be written (issue 11): a read-only bind mount and a full (tiny tmpfs) file
system, made per command with `unshare -m` (we run as root, which ignores permission bits; a read-only
mount stops root too). A no-op build on a read-only store succeeds; a build or fetch that must write
fails with one line naming the path and the cause, and no traceback."""
from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from build_helpers import needs_nvcc
from test_attack_builds import INVOKE, scratch_project


def _can_mount() -> bool:
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(shutil.which("unshare") is None or not _can_mount(),
                                reason="needs `unshare -m` and mount (root in a mount namespace)")


def read_only(p: Path) -> str:
    return f"mount --bind {p} {p} && mount -o remount,bind,ro {p}"


def full(p: Path, size: str) -> str:
    return f"mount -t tmpfs -o size={size} tmpfs {p}"


def invoke_in(mounts: list[str], args: list[str], proj: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`invoke ARGS` in a private mount namespace where `mounts` (shell commands) were made first."""
    script = " && ".join(mounts + ['exec "$@"'])
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(INVOKE), *args], cwd=proj, env=env,
                          capture_output=True, text=True, timeout=600)


def one_clear_line(r: subprocess.CompletedProcess, path: Path, cause: str) -> str:
    text = r.stdout + r.stderr
    assert r.returncode == 1, text
    assert "Traceback" not in text, text
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    assert str(path) in errors[0] and cause in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not installed")
    tmp = tmp_path_factory.mktemp("store-attack")
    proj, env = scratch_project(tmp, {"k/a.cu": "__global__ void ka(float* x) { x[0] = 1; }\n"})
    r = subprocess.run([str(INVOKE), "kernels"], cwd=proj, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return proj, env, tmp / "store", tmp / "ext"


@needs_nvcc
def test_noop_build_on_a_read_only_store_succeeds(built) -> None:
    proj, env, store, ext = built
    before = sorted(p.relative_to(store).as_posix() for p in store.rglob("*"))
    r = invoke_in([read_only(store), read_only(ext)], ["kernels"], proj, env)
    assert r.returncode == 0 and "nothing to do" in r.stderr, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "warning" not in r.stderr
    assert sorted(p.relative_to(store).as_posix() for p in store.rglob("*")) == before


@needs_nvcc
def test_a_build_that_must_write_to_a_read_only_store_fails_in_one_line(built) -> None:
    proj, env, store, ext = built
    (proj / "k/a.cu").write_text("__global__ void ka(float* x) { x[0] = 2; }\n")
    try:
        r = invoke_in([read_only(store)], ["kernels"], proj, env)
    finally:
        (proj / "k/a.cu").write_text("__global__ void ka(float* x) { x[0] = 1; }\n")
    one_clear_line(r, store, "Read-only file system")


@needs_nvcc
def test_installing_into_a_full_file_system_fails_in_one_line(built, tmp_path: Path) -> None:
    proj, env, store, _ = built
    ext = tmp_path / "ext-full"
    ext.mkdir()
    r = invoke_in([full(ext, "16k")], ["kernels"], proj, dict(env, MINI_VLLM_EXT_DIR=str(ext)))
    one_clear_line(r, ext, "No space left on device")
    assert list(ext.iterdir()) == []          # nothing half-written left behind (the mount is gone anyway)


def test_fetching_into_a_full_store_fails_in_one_line(tmp_path: Path) -> None:
    from minibuild.hashing import tree_hash

    src = tmp_path / "src"
    (src / "include").mkdir(parents=True)
    (src / "include/big.h").write_bytes(b"// filler\n" * 20000)       # 200 kB: more than the store holds
    tarball = tmp_path / "big.tar.gz"
    with tarfile.open(tarball, "w:gz") as tf:
        tf.add(src / "include", "include")
    proj, env = scratch_project(tmp_path, {"k/a.cu": "\n"})
    import yaml
    cfg = yaml.safe_load((proj / "build_config.yaml").read_text())
    cfg["sources"] = {"big": {"repo": "x/big", "commit": "c0ffee", "subtrees": ["include"],
                              "tree_sha256": tree_hash(src), "mirrors": [tarball.as_uri()]}}
    (proj / "build_config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    store = tmp_path / "store"
    store.mkdir()
    r = invoke_in([full(store, "64k")], ["fetch"], proj, env)
    one_clear_line(r, store, "No space left on device")
