"""Helpers for the image tests: a real docker-registry process, docker config files, scratch checkouts."""
from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python"))

from minibuild.config import Config, load_config, parse_config, read_document  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """A docker-registry (distribution 2.x) on 127.0.0.1:<free port>, optionally with htpasswd auth."""

    def __init__(self, workdir: Path, users: dict[str, str] | None = None, auth: dict | None = None) -> None:
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        cfg = {"version": 0.1, "log": {"level": "info", "formatter": "text"},
               "storage": {"filesystem": {"rootdirectory": str(workdir / "data")}},
               "http": {"addr": self.host}}
        if users:
            import bcrypt

            lines = [f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=5)).decode()}" for u, p in users.items()]
            (workdir / "htpasswd").write_text("\n".join(lines) + "\n")
            cfg["auth"] = {"htpasswd": {"realm": "mini-vllm-test", "path": str(workdir / "htpasswd")}}
        if auth:
            cfg["auth"] = auth
        (workdir / "config.yml").write_text(json.dumps(cfg))   # JSON is YAML
        self.log = workdir / "registry.log"
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(workdir / "config.yml")],
                                     stdout=self._logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://{self.host}/v2/", timeout=1).status_code in (200, 401):
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"docker-registry did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._logf.close()


def write_docker_config(dirpath: Path, host: str, user: str, password: str) -> Path:
    dirpath.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (dirpath / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return dirpath


# The `small` profile's requirements: the shape of the h100 lock in three small real wheels - one for
# the cuda-libs layer (nvidia-*), one cuda-* helper, one for the `wheels` layer (torch has no small twin).
SMALL_REQS = "pyyaml>=6\nnvidia-nvtx==13.0.85\ncuda-pathfinder==1.9.1\n"
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.invalid", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1",
           # fixed dates: two scratch checkouts of the same files are the same commit (as two clones are)
           "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z"}


def git(checkout: Path, *args: str) -> str:
    import os

    return subprocess.run(["git", "-C", str(checkout), *args], check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout


def make_checkout(dest: Path) -> Path:
    """A scratch git checkout of what image builds read: config, stage data/locks, pyproject, python/mini_vllm
    (committed: images take the server's files from git's index)."""
    dest.mkdir(parents=True)
    for rel in ("build_config.yaml", "pyproject.toml"):
        shutil.copy2(REPO / rel, dest / rel)
    shutil.copytree(REPO / "images", dest / "images")
    shutil.copytree(REPO / "python" / "mini_vllm", dest / "python" / "mini_vllm",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "scratch checkout")
    return dest


def small_config(checkout: Path, small_lock: Path, **extra_profiles: dict) -> Config:
    """Config of checkout with profile `small`: the local profile's base + the small wheel lock (plus
    `extra_profiles`, each given as the changes to `small`)."""
    shutil.copy2(small_lock, checkout / "images" / "pylock.small.toml")
    (checkout / "images" / "wheels-small.in").write_text(SMALL_REQS)
    doc = read_document(checkout / "build_config.yaml")
    profiles = doc["images"]["profiles"]
    profiles["small"] = {**profiles["local"], "wheels": {"requirements": "images/wheels-small.in",
                                                         "lock": "images/pylock.small.toml"}}
    for name, changes in extra_profiles.items():
        profiles[name] = {**profiles["small"], **changes}
    doc["images"]["profile"] = "small"
    return parse_config(doc, checkout)
