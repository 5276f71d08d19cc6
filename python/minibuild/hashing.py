"""Content hashing shared by the store, sources, compiles and image layers.

Why one module: every cache key in mini-vLLM is a sha256 over a *canonical* encoding, and two pieces
of code encoding the same thing differently would silently split the cache. So the three encodings
live here and nowhere else:

* `digest_bytes` / `digest_file` - plain sha256 of content (hex, 64 chars).
* `canonical_key(obj)` - sha256 of a JSON encoding with sorted keys and no whitespace; used for task
  keys (inputs are strings, numbers, lists, dicts).
* `tree_hash(root)` - sha256 of an extracted file tree, independent of how it was archived: one line
  per entry, sorted by relative POSIX path, `f<TAB>x|-<TAB>sha256<TAB>path` for files (only the exec
  bit of the mode counts) and `l<TAB>-<TAB>target<TAB>path` for symlinks. Directories are implied by
  their files (empty directories do not count, as in git).

`StatCache` remembers (size, mtime_ns, ctime_ns, inode) -> digest so that a no-op build rehashes
nothing it has hashed before; it is persisted as JSON, and a stale or unreadable file is just a miss.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from pathlib import Path
from typing import Any, Iterator

CHUNK = 1 << 20
HEX_LEN = 64


def digest_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def canonical_json(obj: Any) -> bytes:
    """The one canonical encoding of a key's inputs (sorted keys, compact, UTF-8)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def canonical_key(obj: Any) -> str:
    return digest_bytes(canonical_json(obj))


def normalize_digest(d: str) -> str:
    """Accept 'sha256:<hex>' (OCI style) or '<hex>'; return lower-case hex or raise ValueError."""
    hexpart = d.split(":", 1)[1] if d.startswith("sha256:") else d
    hexpart = hexpart.lower()
    if len(hexpart) != HEX_LEN or any(c not in "0123456789abcdef" for c in hexpart):
        raise ValueError(f"not a sha256 digest: {d!r}")
    return hexpart


class TreeError(ValueError):
    """A file tree holds something a pinned tree must not (odd names, sockets, devices)."""


def tree_entries(root: str | os.PathLike[str]) -> Iterator[tuple[str, str, str, str]]:
    """(kind, exec, digest-or-target, relpath) for every file and symlink under root, sorted by path."""
    root = Path(root)
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = Path(dirpath, name)
            rel = p.relative_to(root).as_posix()
            if "\n" in rel or "\t" in rel:
                raise TreeError(f"{rel!r}: tab or newline in a path name")
            found.append((rel, p))
    for rel, p in sorted(found, key=lambda e: e[0].encode()):
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            yield ("l", "-", os.readlink(p), rel)
        elif stat.S_ISREG(st.st_mode):
            yield ("f", "x" if st.st_mode & 0o100 else "-", digest_file(p), rel)
        else:
            raise TreeError(f"{rel}: not a regular file or symlink")


def tree_listing(root: str | os.PathLike[str]) -> list[tuple[str, str, str, str]]:
    return list(tree_entries(root))


def tree_hash_of_listing(listing: list[tuple[str, str, str, str]]) -> str:
    h = hashlib.sha256()
    for kind, ex, value, rel in listing:
        h.update(f"{kind}\t{ex}\t{value}\t{rel}\n".encode())
    return h.hexdigest()


def tree_hash(root: str | os.PathLike[str]) -> str:
    return tree_hash_of_listing(tree_listing(root))


class StatCache:
    """path -> digest, trusted while (size, mtime_ns, ctime_ns, inode) are unchanged.

    Entries written within the same second as the file's mtime are not trusted later (a write in the
    same clock tick could keep mtime equal), the 'racy git' rule.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path else None
        self._data: dict[str, list[Any]] = {}
        self.dirty = False
        if self.path:
            try:
                data = json.loads(self.path.read_text())
                if isinstance(data, dict):
                    self._data = data
            except (OSError, ValueError):
                self._data = {}

    @staticmethod
    def _sig(st: os.stat_result) -> list[int]:
        return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]

    def digest(self, path: str | os.PathLike[str]) -> str:
        """sha256 of the file at path (cached). Raises OSError if it cannot be read."""
        key = os.fspath(path)
        st = os.stat(key)
        sig = self._sig(st)
        hit = self._data.get(key)
        if hit and hit[:4] == sig and len(hit) == 5:
            return hit[4]
        d = digest_file(key)
        if time.time_ns() - st.st_mtime_ns > 2_000_000_000:
            self._data[key] = sig + [d]
            self.dirty = True
        return d

    def save(self) -> None:
        if not (self.path and self.dirty):
            return
        from .atomic import atomic_write_bytes

        try:
            atomic_write_bytes(self.path, json.dumps(self._data).encode(), fsync=False)
            self.dirty = False
        except OSError:
            pass  # only a cache
