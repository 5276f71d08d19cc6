"""A small Prometheus HTTP API client: instant and range queries, targets, readiness.

Used to check what a live Prometheus sees (tests, the dashboard picture) - the dashboard's queries are
only worth something if they return data from what the servers really export.
"""
from __future__ import annotations

import math
import time
from typing import Any

import httpx


class PromError(RuntimeError):
    """Prometheus answered with an error (bad query) or not at all."""


def _get(base: str, path: str, params: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
    try:
        r = httpx.get(base.rstrip("/") + path, params=params, timeout=timeout)
    except httpx.HTTPError as exc:
        raise PromError(f"{base}: {type(exc).__name__}: {exc}") from exc
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    if r.status_code != 200 or body.get("status") != "success":
        raise PromError(f"{path} {params}: HTTP {r.status_code} {body.get('error') or r.text[:300]}")
    return body["data"]


def query(base: str, expr: str) -> list[tuple[dict[str, str], float]]:
    """Instant vector: [(labels, value)]; NaN values kept (0/0 is a real answer)."""
    data = _get(base, "/api/v1/query", {"query": expr})
    if data["resultType"] == "scalar":
        return [({}, float(data["result"][1]))]
    return [(s["metric"], float(s["value"][1])) for s in data["result"]]


def query_range(base: str, expr: str, start: float, end: float, step: float) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
    data = _get(base, "/api/v1/query_range", {"query": expr, "start": start, "end": end, "step": step})
    return [(s["metric"], [(float(t), float(v)) for t, v in s["values"]]) for s in data["result"]]


def finite(series: list[tuple[dict[str, str], list[tuple[float, float]]]]) -> int:
    """How many points of a range result are real numbers (histogram_quantile of nothing gives NaN)."""
    return sum(1 for _, pts in series for _, v in pts if not math.isnan(v))


def targets(base: str) -> list[dict[str, Any]]:
    return _get(base, "/api/v1/targets")["activeTargets"]


def wait_ready(base: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(base.rstrip("/") + "/-/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise PromError(f"Prometheus at {base} not ready after {timeout_s:.0f} s")
