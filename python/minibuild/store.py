"""The content-addressed store every build artefact goes through (objects, modules, trees, layers).

Why it looks like this:
* Blobs are named by the sha256 of their content (`blobs/sha256/<hex>`), so a name can be checked:
  every read rehashes (once per process per file state) and a corrupt blob is deleted, reported,
  and treated as a miss - it is rebuilt, never used.
* The action cache (`ac/<k2>/<key>.json`) maps a task key to a small JSON record that points at blob
  digests. A record carries a checksum of itself; a torn or edited record is deleted like a blob.
* Writes are atomic: temp file in the same directory, fsync, rename. A build killed at any instant
  leaves at most `.tmp-*` files, which nothing trusts and `gc` removes.
* `lock(name)` is an fcntl lock file, so concurrent builds on one store wait for each other per key
  instead of compiling the same object twice; the kernel drops the lock if the holder dies.
* Trees (`trees/<id>/`) are extracted, verified source trees, installed by directory rename; a JSON
  listing beside each (`trees/<id>.json`) lets users of single files check them cheaply.
* Optional remote cache (see remote.py): read-through on miss, write-through on put.
* Roots (`roots/<name>.json`) name what the latest builds use; `gc` keeps those (cache_cmd.py).

Digests are lower-case hex; 'sha256:<hex>' is accepted wherever a digest is taken.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

from .atomic import atomic_copy, atomic_write_bytes, make_writable, naming, unlink_quietly
from .hashing import CHUNK, StatCache, canonical_key, digest_file, normalize_digest
from . import ui
from .config import StoreConfig

RECORD_VERSION = 1


class StoreError(RuntimeError):
    """The store cannot give what was asked (missing or corrupt and not rebuildable here)."""


class MissingBlob(StoreError):
    pass


class BlobWriter:
    """Stream content into the store; `digest` is set once the `with` block closes cleanly."""

    def __init__(self, store: "Store") -> None:
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


class Store:
    """A local content-addressed store, optionally backed by a remote cache."""

    def __init__(self, root: str | os.PathLike[str], remote: Any = None) -> None:
        self.root = Path(root)
        self.blob_dir = self.root / "blobs" / "sha256"
        self.ac_dir = self.root / "ac"
        self.meta_dir = self.root / "meta"
        self.trees_dir = self.root / "trees"
        self.locks_dir = self.root / "locks"
        self.roots_dir = self.root / "roots"
        self.tmp = self.root / "tmp"
        for d in (self.blob_dir, self.ac_dir, self.meta_dir, self.trees_dir, self.locks_dir,
                  self.roots_dir, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        self.remote = remote
        self.stat_cache = StatCache(self.root / "statcache.json")

    @classmethod
    def from_config(cls, cfg: StoreConfig) -> "Store":
        """The store build_config.yaml's `store:` names (environment already applied by config)."""
        remote = None
        if cfg.remote:
            from .remote import remote_from_url

            remote = remote_from_url(cfg.remote)
        return cls(cfg.root, remote=remote)

    # ---- blobs ------------------------------------------------------------------------------
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

    # ---- action cache -------------------------------------------------------------------------
    def _ac_file(self, key: str) -> Path:
        key = normalize_digest(key)
        return self.ac_dir / key[:2] / f"{key}.json"

    def get_action(self, key: str) -> dict[str, Any] | None:
        """The record stored under key, or None. Corrupt records are deleted (and reported)."""
        p = self._ac_file(key)
        rec = self._read_record(p, key)
        if rec is None and self.remote is not None:
            try:
                data = self.remote.get_action(normalize_digest(key))
            except Exception as exc:
                ui.warn(f"remote cache: lookup of {key[:12]} failed: {exc}")
                data = None
            if data is not None:
                try:
                    rec = self._check_record(json.loads(data), key)
                except ValueError:
                    rec = None
                if rec is not None:
                    atomic_write_bytes(p, data, fsync=False)
                    self.log_event("remote_hit", what="action", key=key)
        if rec is not None:
            try:
                os.utime(p)  # last use, for gc --max-age-days
            except OSError:
                pass
        return rec

    def _read_record(self, p: Path, key: str) -> dict[str, Any] | None:
        try:
            raw = p.read_bytes()
        except FileNotFoundError:
            return None
        try:
            rec = self._check_record(json.loads(raw), key)
        except ValueError:
            rec = None
        if rec is None:
            ui.warn(f"store: corrupt action record {key[:16]}...; deleted, will rebuild")
            self.log_event("corrupt", what="action", key=key)
            unlink_quietly(p)
        return rec

    @staticmethod
    def _check_record(doc: Any, key: str) -> dict[str, Any] | None:
        if not (isinstance(doc, dict) and doc.get("v") == RECORD_VERSION
                and doc.get("key") == normalize_digest(key) and isinstance(doc.get("record"), dict)):
            return None
        return doc["record"] if canonical_key(doc["record"]) == doc.get("check") else None

    def put_action(self, key: str, record: dict[str, Any]) -> None:
        """Store a record; every blob it names (record['blobs']) must already be in the store."""
        for d in record.get("blobs", []):
            if not self.has_blob(d):
                raise StoreError(f"action {key[:12]} names blob {d[:12]} that is not stored")
        key = normalize_digest(key)
        data = json.dumps({"v": RECORD_VERSION, "key": key, "record": record,
                           "check": canonical_key(record)}, sort_keys=True).encode()
        atomic_write_bytes(self._ac_file(key), data)
        if self.remote is not None:
            try:
                self.remote.put_action(key, data)
            except Exception as exc:
                ui.warn(f"remote cache: upload of action {key[:12]} failed: {exc}")

    # ---- small named metadata (not content-addressed: last inputs per task, header manifests) ----
    def _meta_file(self, ns: str, name: str) -> Path:
        return self.meta_dir / ns / f"{canonical_key(name)}.json"

    def get_meta(self, ns: str, name: str) -> Any:
        try:
            doc = json.loads(self._meta_file(ns, name).read_bytes())
        except (OSError, ValueError):
            return None
        return doc.get("value") if isinstance(doc, dict) and doc.get("name") == name else None

    def put_meta(self, ns: str, name: str, value: Any) -> None:
        atomic_write_bytes(self._meta_file(ns, name), json.dumps({"name": name, "value": value}).encode(),
                           fsync=False)

    # ---- locks ---------------------------------------------------------------------------------
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

    # ---- trees ---------------------------------------------------------------------------------
    def tree_dir(self, tree_id: str) -> Path:
        return self.trees_dir / normalize_digest(tree_id)

    def tree_listing(self, tree_id: str) -> dict[str, str] | None:
        """relpath -> content digest (files) or '->target' (symlinks) of an installed tree."""
        try:
            doc = json.loads((self.trees_dir / f"{normalize_digest(tree_id)}.json").read_bytes())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def has_tree(self, tree_id: str) -> bool:
        return self.tree_dir(tree_id).is_dir() and self.tree_listing(tree_id) is not None

    def install_tree(self, staged: Path, tree_id: str, listing: dict[str, str]) -> Path:
        """Rename a fully verified staged directory (inside self.tmp) into trees/<id>."""
        dest = self.tree_dir(tree_id)
        atomic_write_bytes(self.trees_dir / f"{tree_id}.json", json.dumps(listing, sort_keys=True).encode())
        if dest.exists():
            shutil.rmtree(staged, ignore_errors=True)
        else:
            os.replace(staged, dest)
        return dest

    def remove_tree(self, tree_id: str) -> None:
        unlink_quietly(self.trees_dir / f"{normalize_digest(tree_id)}.json")
        d = self.tree_dir(tree_id)
        if d.exists():
            junk = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.tmp))
            os.replace(d, junk / "t")
            make_writable(junk)
            shutil.rmtree(junk, ignore_errors=True)

    def staging_dir(self) -> Path:
        """A fresh temp directory on the store's filesystem (for extraction, builds)."""
        return Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.tmp))

    # ---- roots and events ------------------------------------------------------------------------
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
