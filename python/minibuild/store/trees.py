"""The store's trees: extracted, verified source trees, installed by one directory rename.

Why a listing beside each tree (`trees/<id>.json`, path -> digest): users of single files (the header
scan of a compile) check them cheaply against it, and a tree changed after verification is noticed.
Staging directories live in `tmp/` on the same filesystem, so installing is a rename, never a copy.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..atomic import atomic_write_bytes, make_writable, unlink_quietly
from ..hashing import normalize_digest


class Trees:
    """trees/<id>/ + trees/<id>.json, and staging directories under tmp/."""

    trees_dir: Path
    tmp: Path

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
