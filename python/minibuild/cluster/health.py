"""Wait until a server answers GET /health, while watching that what runs it is still alive.

Local processes and Slurm jobs both need "wait for healthy, but stop early - with the reason - if the
process / job died"; one function does it for both (Kubernetes uses its own probes and waiter).
"""
from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from minibuild import ui


def check(url: str, timeout: float = 2.0, path: str = "/health") -> tuple[bool, str]:
    """(healthy, what /health said): 200 is healthy; a 503 body says loading or why the load failed.
    `path`: another health route (the router's /readiness, LiteLLM's /health/liveliness)."""
    try:
        r = httpx.get(f"{url.rstrip('/')}{path}", timeout=timeout)
    except httpx.HTTPError as exc:
        return False, f"no answer ({type(exc).__name__})"
    if r.status_code == 200:
        return True, "ok"
    try:
        return False, str(r.json().get("error", {}).get("message") or r.text)[:500]
    except ValueError:
        return False, f"HTTP {r.status_code}"


def probe(url: str, timeout: float = 2.0, path: str = "/health") -> bool:
    """True when GET {url}{path} answers 200."""
    return check(url, timeout, path)[0]


def wait_healthy(url: str, timeout_s: float, dead: Callable[[], str | None], what: str,
                 interval_s: float = 0.5, path: str = "/health") -> str | None:
    """None once healthy; else why not (`dead()` gave a reason, the model failed to load, or time ran out)."""
    start = time.monotonic()
    with ui.console().status(f"waiting for {what} to answer {url}{path}") as status:
        while True:
            ok, said = check(url, path=path)
            if ok:
                ui.console().print(f"[green]healthy[/] {what} at {url} after {time.monotonic() - start:.1f} s")
                return None
            if "failed to load" in said:   # the server stays up to report this; waiting will not help
                return f"{what}: {said}"
            reason = dead()
            if reason:
                return reason
            elapsed = time.monotonic() - start
            if elapsed > timeout_s:
                return f"{what} did not answer {url}{path} within {timeout_s:.0f} s (last: {said})"
            status.update(f"waiting for {what} to answer {url}{path} ({elapsed:.0f} s: {said})")
            time.sleep(interval_s)


def tail(path, lines: int) -> list[str]:
    """The last `lines` lines of a text file ([] when it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            return f.read().decode(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return []
