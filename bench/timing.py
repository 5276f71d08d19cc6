"""One timing wrapper for the bench scripts (host-side phase split of an engine step)."""
from __future__ import annotations

import time


def timed(obj: object, name: str, acc: dict[str, float], key: str | None = None) -> None:
    """Wrap obj.name so that its wall time accumulates in acc[key or name]."""
    fn = getattr(obj, name)
    key = key or name

    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            acc[key] = acc.get(key, 0.0) + time.perf_counter() - t

    setattr(obj, name, wrapper)
