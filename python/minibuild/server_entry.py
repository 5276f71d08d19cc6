"""The server's own entry points, run as processes: the builder never imports the server.

Why processes: python/minibuild (the builder) and python/mini_vllm (the server) stay one-way - the
builder knows the server only by its command lines (`python -m mini_vllm.cli serve`, `python -m
mini_vllm.model.tiny OUT`), exactly as a cluster does, so neither package can grow on the other's
internals and the builder runs without torch imported. This is also the ONE place that makes the tiny
model: `invoke model`, `invoke up` and a local rollout all come here.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .config import Config


class ServerEntryError(RuntimeError):
    """A server entry point failed; the message holds its command and the tail of its output."""


def server_env(root: Path) -> dict[str, str]:
    """This environment with the checkout's python/ first on PYTHONPATH (what the server processes run)."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(root / "python"), os.environ.get("PYTHONPATH")) if p))


def write_tiny_model(cfg: Config, out: Path | None = None, seed: int = 0, force: bool = True) -> tuple[Path, bool]:
    """(path, written): the tiny GPT-OSS checkpoint at `out` (default model.tiny_dir), written by
    `python -m mini_vllm.model.tiny` - always with `force`, else only when it is missing."""
    out = Path(out) if out else cfg.model.tiny_dir
    if not force and (out / "config.json").exists():
        return out, False
    cmd = [sys.executable, "-m", "mini_vllm.model.tiny", str(out), "--seed", str(seed)]
    r = subprocess.run(cmd, env=server_env(cfg.root), cwd=cfg.root, capture_output=True, text=True)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise ServerEntryError(f"writing the tiny model failed: `{' '.join(cmd[1:])}` exited {r.returncode}: {tail[0]}")
    return out, True
