"""Start a real Prometheus (Debian's `prometheus` binary) on 127.0.0.1 that scrapes given targets; query it.

A test helper for tests that check /metrics the way production reads it (the server's metric names
through PromQL); queries go through minibuild.cluster.promql (the dashboards' client). Prometheus keeps its
data in a temporary directory and is stopped on exit.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml
from minibuild.cluster import promql

from server_process import free_port


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen
    log_path: Path

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        return promql.query(self.url, expr)

    def value(self, expr: str) -> float | None:
        """The single result's value (None when the query returns nothing)."""
        res = self.query(expr)
        return res[0][1] if res else None

    def wait_for(self, expr: str, timeout: float = 30.0) -> list[tuple[dict[str, str], float]]:
        """Poll until `expr` returns a non-empty result (after the next scrapes land)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log_path.read_text()[-2000:]}")
            res = self.query(expr)
            if res:
                return res
            time.sleep(0.25)
        raise TimeoutError(f"{expr!r} still empty after {timeout} s; log: {self.log_path.read_text()[-2000:]}")


@contextmanager
def prometheus(targets: list[str], work: Path, job: str = "mini-vllm", bearer_token: str | None = None,
               interval_s: float = 1.0) -> Iterator[Prometheus]:
    """Prometheus scraping `targets` ("127.0.0.1:PORT") every `interval_s`; yields once it answers."""
    work.mkdir(parents=True, exist_ok=True)
    every = f"{int(interval_s * 1000)}ms"
    job_cfg: dict[str, Any] = {"job_name": job, "static_configs": [{"targets": list(targets)}]}
    if bearer_token:
        job_cfg["authorization"] = {"credentials": bearer_token}
    (work / "prometheus.yml").write_text(yaml.safe_dump(
        {"global": {"scrape_interval": every, "evaluation_interval": every}, "scrape_configs": [job_cfg]}))
    with prometheus_with_config(work / "prometheus.yml", work) as prom:
        yield prom


@contextmanager
def prometheus_with_config(config: Path, work: Path) -> Iterator[Prometheus]:
    """Prometheus run with an existing config file (e.g. the one `invoke rollout` wrote); data under `work`."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("the `prometheus` binary is missing: ./dev installs the Debian package")
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = work / "prometheus.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([binary, f"--config.file={config}",
                                 f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT)
    prom = Prometheus(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        promql.wait_ready(prom.url, 30)
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
