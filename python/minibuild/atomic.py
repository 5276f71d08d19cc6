"""Filesystem writes that never leave half a file, and the small helpers they need.

Why a module of its own: the store, the stat cache in hashing.py, the image builder and the kernel
installer all write files that a concurrent or later reader must see whole or not at all (temp file in
the same directory, fsync, rename). One implementation, importable without the store.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

CHUNK = 1 << 20


@contextmanager
def naming(path: str | os.PathLike[str]) -> Iterator[None]:
    """An OSError raised inside that names no file (write() or fsync() on a full disk) names `path`."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, os.fspath(path)) from None
        raise


def _replace_atomically(path: str | os.PathLike[str], fill: Callable[[BinaryIO], None], mode: int,
                        fsync: bool) -> None:
    """Write a temp file beside path with `fill`, then rename it over path; on any error, no trace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with naming(path), os.fdopen(fd, "wb") as f:
            fill(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mode: int = 0o644,
                       fsync: bool = True) -> None:
    """Write data to path so that readers see the old file or the whole new one, never a part."""
    _replace_atomically(path, lambda f: f.write(data), mode, fsync)


def atomic_copy(src: str | os.PathLike[str], dest: str | os.PathLike[str], mode: int = 0o644) -> None:
    def fill(out: BinaryIO) -> None:
        with open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, CHUNK)

    _replace_atomically(dest, fill, mode, fsync=True)


def unlink_quietly(p: str | os.PathLike[str]) -> None:
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass


def make_writable(p: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(p):
        os.chmod(dirpath, 0o755)
        for n in filenames:
            fp = os.path.join(dirpath, n)
            if not os.path.islink(fp):
                os.chmod(fp, 0o644)
