"""The store's blobs: content named by its sha256, checked on every read, mirrored to the remote cache.

Why: a name that is the content's hash can be verified - a read rehashes (once per process per file
state, through the stat cache) and a corrupt blob is deleted, reported and treated as a miss, so it is
rebuilt, never used. Writes stream into a `.tmp-*` file beside the blobs and are renamed into place
only when complete. With a remote cache (remote.py) a local miss reads through and every put writes
through; the remote is best effort and never makes a local result fail.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from .. import ui
from ..atomic import atomic_copy, naming, unlink_quietly
from ..hashing import CHUNK, StatCache, digest_file, normalize_digest


class StoreError(RuntimeError):
    """The store cannot give what was asked (missing or corrupt and not rebuildable here)."""


class MissingBlob(StoreError):
    pass


class BlobWriter:
    """Stream content into the store; `digest` is set once the `with` block closes cleanly."""

    def __init__(self, store: "Blobs") -> None:
        import hashlib

        self._store = store
        self._h = hashlib.sha256()
        fd, self._tmp = tempfile.mkstemp(prefix=".tmp-", dir=store.blob_dir)
        self._f: BinaryIO = os.fdopen(fd, "wb")
        self.digest: str | None = None
        self.size = 0

    def write(self, data: bytes) -> int:
        self._h.update(data)
        self.size += len(data)
        with naming(self._tmp):            # a full disk names the file, not just "[Errno 28]"
            return self._f.write(data)

    def _finish(self) -> str:
        with naming(self._tmp):
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
        self.digest = self._h.hexdigest()
        self._store._adopt(self._tmp, self.digest)
        return self.digest

    def _abort(self) -> None:
        self._f.close()
        unlink_quietly(self._tmp)


class Blobs:
    """blobs/sha256/<hex>: verified reads, atomic writes, read/write-through to `remote`."""

    blob_dir: Path
    remote: Any
    stat_cache: StatCache

    log_event: Callable[..., None]        # Journal's

    def _blob_file(self, digest: str) -> Path:
        return self.blob_dir / normalize_digest(digest)

    def has_blob(self, digest: str) -> bool:
        return self._blob_file(digest).is_file()

    def _adopt(self, tmp: str | os.PathLike[str], digest: str) -> None:
        """Move a complete temp file (same filesystem) into place as blob <digest>; push remote."""
        dest = self._blob_file(digest)
        os.chmod(tmp, 0o444)
        os.replace(tmp, dest)
        if self.remote is not None:
            try:
                self.remote.put_blob(digest, dest)
            except Exception as exc:  # remote is best effort; local result stands
                ui.warn(f"remote cache: upload of blob {digest[:12]} failed: {exc}")

    @contextmanager
    def blob_writer(self) -> Iterator[BlobWriter]:
        w = BlobWriter(self)
        try:
            yield w
        except BaseException:
            w._abort()
            raise
        w._finish()

    def put_bytes(self, data: bytes) -> str:
        with self.blob_writer() as w:
            w.write(data)
        assert w.digest
        return w.digest

    def put_file(self, path: str | os.PathLike[str]) -> str:
        """Copy a file into the store (hashing while copying); returns its digest."""
        with self.blob_writer() as w, open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                w.write(chunk)
        assert w.digest
        return w.digest

    def blob_path(self, digest: str) -> Path:
        """Path of a verified blob; fetched from the remote on a local miss. Raises MissingBlob."""
        digest = normalize_digest(digest)
        p = self._blob_file(digest)
        if p.is_file() and self._verify(p, digest):
            return p
        if self.remote is not None and self._fetch_remote_blob(digest):
            return p
        raise MissingBlob(f"blob {digest} is not in the store")

    def _verify(self, p: Path, digest: str) -> bool:
        # Rehash unless the stat cache saw this exact file state (size, mtime, ctime, inode) before.
        if self.stat_cache.digest(p) == digest:
            return True
        ui.warn(f"store: corrupt blob {digest[:16]}... (content does not match its name); deleted, will rebuild")
        self.log_event("corrupt", what="blob", digest=digest)
        unlink_quietly(p)
        return False

    def _fetch_remote_blob(self, digest: str) -> bool:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.blob_dir)
        os.close(fd)
        try:
            if not self.remote.get_blob(digest, tmp):
                return False
            if digest_file(tmp) != digest:
                ui.warn(f"remote cache: blob {digest[:16]} failed verification; ignored")
                return False
            os.chmod(tmp, 0o444)
            os.replace(tmp, self._blob_file(digest))
            self.log_event("remote_hit", what="blob", digest=digest)
            return True
        except Exception as exc:
            ui.warn(f"remote cache: download of blob {digest[:12]} failed: {exc}")
            return False
        finally:
            unlink_quietly(tmp)

    def read_blob(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    def export_blob(self, digest: str, dest: str | os.PathLike[str], mode: int = 0o644) -> None:
        """Atomically copy a verified blob to dest (e.g. install a module)."""
        atomic_copy(self.blob_path(digest), dest, mode)
