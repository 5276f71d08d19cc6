"""The store's locks: one fcntl lock file per name, shared by every process using the store.

Why fcntl: concurrent builds on one store wait for each other per key instead of compiling the same
object twice, and the kernel drops a lock when its holder dies - no stale lock files to clean.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..hashing import canonical_key


class Locks:
    """locks/<hash of name>.lock."""

    locks_dir: Path

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Exclusive lock across processes on this store (fcntl; released if the holder dies)."""
        p = self.locks_dir / f"{canonical_key(name)[:32]}.lock"
        fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
