"""Start `mini-vllm serve` as a child process on a free 127.0.0.1 port, wait for it, stop it.

A test and bench helper (not part of the server): the API tests, bench/bench_http.py and
bench/bench_api_overhead.py need a real server process, not an in-process app - the point is to
exercise uvicorn, the socket and the CLI exactly as deployed. Benches put tests/ on sys.path for it.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    url: str
    log_path: Path

    def first_status(self, timeout: float = 60.0) -> int:
        """Status of the first /health answer (the port opens once the model is loaded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                return httpx.get(self.url + "/health", timeout=2).status_code
            except httpx.TransportError:
                time.sleep(0.02)
        raise TimeoutError(f"server did not answer within {timeout} s; log: {self.log()}")

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready within {timeout} s; log: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"server exited with {self.proc.returncode}; log: {self.log()}")


def start_server(model_dir: str | Path, *flags: str, log_dir: str | Path, env: dict[str, str] | None = None) -> ServerProcess:
    port = free_port()
    log_path = Path(log_dir) / f"server-{port}.log"
    cmd = [sys.executable, "-m", "mini_vllm.cli", "serve", str(model_dir), "--host", "127.0.0.1",
           "--port", str(port), *flags]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    return ServerProcess(proc, f"http://127.0.0.1:{port}", log_path)
