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


def follow_logs(env: dict[str, str], *args: str) -> subprocess.Popen:
    """`invoke logs -f ARGS` in the background; a thread collects its lines (read with wait_for_line)."""
    import queue
    import threading

    proc = subprocess.Popen([str(INVOKE), "logs", "-f", *args], cwd=ROOT, env={**os.environ, "COLUMNS": "200", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc.lines = queue.Queue()          # type: ignore[attr-defined]

    def read() -> None:
        for line in proc.stdout:
            proc.lines.put(line)        # type: ignore[attr-defined]
        proc.lines.put(None)            # type: ignore[attr-defined]
    threading.Thread(target=read, daemon=True).start()
    return proc


def wait_for_line(proc: subprocess.Popen, needle: str, timeout: float = 30) -> bool:
    """Take the follower's lines until one contains `needle` (False on timeout or end of output)."""
    import queue
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            line = proc.lines.get(timeout=max(0.01, deadline - time.monotonic()))   # type: ignore[attr-defined]
        except queue.Empty:
            return False
        if line is None:
            return False
        if needle in line:
            return True
