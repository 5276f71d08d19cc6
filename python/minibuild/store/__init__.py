"""The content-addressed store every build artefact goes through (objects, modules, trees, layers).

One directory, one room per job (each module says why it looks the way it does):
* blobs.py    `blobs/sha256/<hex>`: content named by its hash, verified on read; the remote cache
              (remote.py: read-through on miss, write-through on put).
* records.py  `ac/<k2>/<key>.json`: the action cache (task key -> record naming blobs), and `meta/`.
* trees.py    `trees/<id>/`: verified source trees, installed by rename, with their listings.
* locks.py    `locks/`: fcntl locks per name, so concurrent builds wait instead of repeating work.
* journal.py  `roots/` (what `gc` keeps) and `events.log`.
Writes are atomic everywhere: temp file in the same directory, fsync, rename. A build killed at any
instant leaves at most `.tmp-*` files, which nothing trusts and `gc` removes.

Digests are lower-case hex; 'sha256:<hex>' is accepted wherever a digest is taken.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import StoreConfig
from ..hashing import StatCache
from .blobs import Blobs, BlobWriter, MissingBlob, StoreError
from .journal import Journal
from .locks import Locks
from .records import RECORD_VERSION, ActionRecords
from .trees import Trees

__all__ = ["Store", "StoreError", "MissingBlob", "BlobWriter", "RECORD_VERSION"]


class Store(Blobs, ActionRecords, Trees, Locks, Journal):
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
            from ..remote import remote_from_url

            remote = remote_from_url(cfg.remote)
        return cls(cfg.root, remote=remote)
