"""Run an image's filesystem without a container runtime (crun cannot run containers on these machines):
`umoci unpack --rootless`, then `unshare -Urmpf` + chroot with /dev, /proc and a model bind-mounted in.
Used by the end-to-end test (local profile) and bench/bench_image_h100.py (the h100 server image)."""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))     # tests/: server_process.py
from server_process import ServerProcess  # noqa: E402


def can_unshare() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-Urm", "true"], capture_output=True).returncode == 0


def unpack(layout: Path, ref: str, bundle: Path) -> tuple[Path, dict]:
    """(rootfs, OCI runtime `process` of the image config) of layout:ref unpacked into bundle."""
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:{ref}", str(bundle)],
                   check=True, capture_output=True)
    return bundle / "rootfs", json.loads((bundle / "config.json").read_text())["process"]


def run_in(rootfs: Path, argv: list[str], env: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """argv inside rootfs (chroot in a user namespace, /dev bound and /proc mounted), with exactly env."""
    root = shlex.quote(str(rootfs))
    script = (f"mount --rbind /dev {root}/dev && mount -t proc proc {root}/proc && exec env -i "
              + " ".join(shlex.quote(a) for a in [*env, "chroot", str(rootfs), *argv]))
    return subprocess.run(["unshare", "-Urmpf", "--kill-child", "sh", "-c", script], capture_output=True,
                          text=True, timeout=timeout)


@contextmanager
def serving(rootfs: Path, process: dict, model: Path, port: int, log: Path, extra: list[str],
            timeout: float = 300) -> Iterator[str]:
    """The image's own entry point serving `model` on 127.0.0.1:port; yields the base URL once healthy."""
    (rootfs / "model").mkdir(exist_ok=True)
    inner = ["env", "-i", *process["env"], "chroot", str(rootfs), *process["args"], "/model", "--host", "127.0.0.1",
             "--port", str(port), *extra]
    script = (f"mount --rbind /dev {rootfs}/dev && mount -t proc proc {rootfs}/proc && "
              f"mount --bind {model} {rootfs}/model && exec " + " ".join(shlex.quote(a) for a in inner))
    with open(log, "wb") as logf:
        proc = subprocess.Popen(["unshare", "-Urmpf", "--kill-child", "sh", "-c", script], stdout=logf,
                                stderr=subprocess.STDOUT)
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log)
    try:
        server.wait_ready(timeout)
        yield server.url
    finally:
        server.stop()
