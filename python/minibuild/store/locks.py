"""The store's locks: one fcntl lock file per name, shared by every process using the store.

Why fcntl: concurrent builds on one store wait for each other per key instead of compiling the same
object twice, and the kernel drops a lock when its holder dies - no stale lock files to clean.
Every build also holds the store-wide "in use" lock shared for its whole run, and `invoke cache --gc`
takes it exclusively: gc waits for running builds instead of deleting the temp files they are writing.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, ContextManager, Iterator

from ..hashing import canonical_key


IN_USE = "store in use by a build"


class Locks:
    """locks/<hash of name>.lock."""

    locks_dir: Path

    def _lock_path(self, name: str) -> Path:
        return self.locks_dir / f"{canonical_key(name)[:32]}.lock"

    @contextmanager
    def _flock(self, fd: int, mode: int, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold flock `mode` on fd (closing it after); with on_wait, call it once if the lock is taken."""
        try:
            if on_wait is None:
                fcntl.flock(fd, mode)
            else:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                except BlockingIOError:
                    on_wait()
                    fcntl.flock(fd, mode)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def lock(self, name: str) -> ContextManager[None]:
        """Exclusive lock across processes on this store (fcntl; released if the holder dies)."""
        return self._flock(os.open(self._lock_path(name), os.O_RDWR | os.O_CREAT, 0o644), fcntl.LOCK_EX)

    @contextmanager
    def in_use(self) -> Iterator[None]:
        """Held (shared) for a whole build. A read-only store cannot be garbage-collected, so a build
        that cannot open the lock file there runs without it."""
        try:
            fd = os.open(self._lock_path(IN_USE), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            try:
                fd = os.open(self._lock_path(IN_USE), os.O_RDONLY)
            except OSError:
                yield
                return
        with self._flock(fd, fcntl.LOCK_SH):
            yield

    def sole_use(self, on_wait: Callable[[], None] = lambda: None) -> ContextManager[None]:
        """Exclusive use of the store (gc): waits until no build holds `in_use`, calling on_wait once
        first if one does."""
        fd = os.open(self._lock_path(IN_USE), os.O_RDWR | os.O_CREAT, 0o644)
        return self._flock(fd, fcntl.LOCK_EX, on_wait)
