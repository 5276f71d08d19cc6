"""Shared by the end-to-end rollout tests: run `invoke` as a user does, with state in a temp dir."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INVOKE = Path(sys.executable).parent / "invoke"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def invoke(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """`invoke ARGS` from the repository root; stdout and stderr together in .stdout."""
    return subprocess.run([str(INVOKE), *args], cwd=ROOT, env={**os.environ, "COLUMNS": "200", **env},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


def tiny_model(path: Path) -> Path:
    from mini_vllm.model.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(path)
