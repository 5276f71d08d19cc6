"""The store's action records: task key -> a small JSON record naming blob digests, plus named metadata.

Why a checksum inside each record: a torn or hand-edited record must not be trusted, so a record that
does not check is deleted (and reported) like a corrupt blob and the task runs again. A record may
only name blobs that are already stored (put_action refuses otherwise), so a hit always has its
artefacts. `meta/` holds small named values that are not content-addressed (last inputs per task for
--explain, the toolchain detection cache).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from .. import ui
from ..atomic import atomic_write_bytes, unlink_quietly
from ..hashing import canonical_key, normalize_digest
from .blobs import StoreError

RECORD_VERSION = 1


class ActionRecords:
    """ac/<k2>/<key>.json (read/write-through to `remote`) and meta/<ns>/<name>.json."""

    ac_dir: Path
    meta_dir: Path
    remote: Any

    has_blob: Callable[[str], bool]       # Blobs'
    log_event: Callable[..., None]        # Journal's

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
