"""The store's journal: roots (what the latest builds use) and the event log.

Why: `gc` (cache_cmd.py) keeps exactly what some root names, and events.log (one JSON line per
compile, link, corruption or remote hit) is how tests and users see what a build really did.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

from ..atomic import atomic_write_bytes, naming
from ..hashing import canonical_key


class Journal:
    """roots/<name>.json and events.log."""

    root: Path
    roots_dir: Path

    def set_root(self, name: str, actions: Iterable[str] = (), blobs: Iterable[str] = (),
                 trees: Iterable[str] = ()) -> None:
        """Record what the latest build called `name` uses; `gc` keeps everything some root names."""
        doc = {"name": name, "time": time.time(), "actions": sorted(set(actions)),
               "blobs": sorted(set(blobs)), "trees": sorted(set(trees))}
        path = self.roots_dir / f"{canonical_key(name)[:32]}.json"
        try:                    # unchanged (a no-op build): no write, so a read-only store serves it
            old = json.loads(path.read_bytes())
            if all(old.get(k) == doc[k] for k in ("name", "actions", "blobs", "trees")):
                return
        except (OSError, ValueError, AttributeError):
            pass
        atomic_write_bytes(path, json.dumps(doc, sort_keys=True).encode(), fsync=False)

    def log_event(self, event: str, **fields: Any) -> None:
        """Append one JSON line to events.log (compiles, links, corruption, remote hits)."""
        line = json.dumps({"t": round(time.time(), 3), "pid": os.getpid(), "event": event, **fields},
                          sort_keys=True) + "\n"
        path = self.root / "events.log"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            with naming(path):
                os.write(fd, line.encode())
        finally:
            os.close(fd)

    def events(self) -> list[dict[str, Any]]:
        try:
            lines = (self.root / "events.log").read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(ln) for ln in lines if ln.strip()]
