"""Deterministic layer tarballs: the same entries always give the same bytes.

Why our own writer (rules_pkg's idea): `tar` and Python's defaults leak the build machine into the
layer - mtimes, owners, umask, directory walk order, pax atime/ctime records, gzip's timestamp and file
name - so two clean builds would differ. Here every entry is normalised before it is written:

* entries sorted by path (bytewise), parent directories added, duplicates resolved (last one wins);
* mtime = SOURCE_DATE_EPOCH (default 0), uid/gid 0, empty user/group names;
* modes fixed: directories 0755, files 0644 or 0755 (any exec bit), unless an entry carries an explicit
  mode (base packages keep their own, e.g. /tmp 1777);
* GNU format (long names via ././@LongLink, no pax headers), no devices, hard links written as files;
* gzip with mtime 0, no file name, a fixed level.

The uncompressed digest (diff_id) is computed while writing, together with the compressed digest, so
the layer is cached by diff_id and the blob goes straight into the content-addressed store.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from .. import ui
from ..store import Store

DIR_MODE = 0o755
FILE_MODE = 0o644
EXEC_MODE = 0o755


@dataclass(frozen=True)
class Entry:
    """One layer entry. `path` is relative POSIX ('usr/bin/x'); exactly one of src/data for files."""

    path: str
    kind: str                      # "file" | "dir" | "symlink"
    mode: int | None = None        # None: the fixed default for the kind
    src: str | None = None         # file: read content from this path
    data: bytes | None = None      # file: literal content
    target: str = ""               # symlink target
    owner: int = 0                 # uid = gid (0 everywhere except a user's home directory)

    def resolved_mode(self) -> int:
        if self.mode is not None:
            return self.mode & 0o7777
        return {"dir": DIR_MODE, "symlink": 0o777}.get(self.kind, FILE_MODE)


class LayerError(ValueError):
    """An entry cannot go into a layer (bad path, unsupported file type)."""


def _clean_path(p: str) -> str:
    parts = [x for x in p.replace("\\", "/").split("/") if x not in ("", ".")]
    if not parts or ".." in parts:
        raise LayerError(f"layer path {p!r} is empty or leaves the root")
    return "/".join(parts)


def tree_entries(root: str | os.PathLike[str], dest: str, exclude: Callable[[str], bool] | None = None,
                 ) -> Iterator[Entry]:
    """Entries for every file/dir/symlink under root, placed under dest ('opt/x'); modes normalised."""
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        keep = []
        for d in dirnames:
            rel = d if rel_dir == "." else f"{rel_dir}/{d}"
            if exclude and exclude(rel):
                continue
            keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames + [d for d in keep if os.path.islink(os.path.join(dirpath, d))]):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if exclude and exclude(rel):
                continue
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            out = f"{dest}/{rel}" if dest else rel
            if stat.S_ISLNK(st.st_mode):
                yield Entry(out, "symlink", target=os.readlink(full))
            elif stat.S_ISREG(st.st_mode):
                yield Entry(out, "file", EXEC_MODE if st.st_mode & 0o111 else FILE_MODE, src=full)
            elif not stat.S_ISDIR(st.st_mode):
                raise LayerError(f"{full}: not a regular file, directory or symlink")
        for d in keep:
            if not os.path.islink(os.path.join(dirpath, d)):
                rel = d if rel_dir == "." else f"{rel_dir}/{d}"
                yield Entry(f"{dest}/{rel}" if dest else rel, "dir")


def normalise(entries: Iterable[Entry]) -> list[Entry]:
    """Clean paths, add missing parent dirs, last duplicate wins, sort bytewise by path."""
    by_path: dict[str, Entry] = {}
    for e in entries:
        if e.kind not in ("file", "dir", "symlink"):
            raise LayerError(f"{e.path}: unsupported entry kind {e.kind}")
        p = _clean_path(e.path)
        by_path[p] = Entry(p, e.kind, e.mode, e.src, e.data, e.target, e.owner)
    for p in list(by_path):
        parts = p.split("/")
        for i in range(1, len(parts)):
            by_path.setdefault("/".join(parts[:i]), Entry("/".join(parts[:i]), "dir"))
    return [by_path[p] for p in sorted(by_path, key=lambda s: s.encode())]


class _HashingWriter(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through to `sink`."""

    def __init__(self, sink: Callable[[bytes], object]) -> None:
        self._sink = sink
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        b = bytes(b)
        self.sha.update(b)
        self.size += len(b)
        self._sink(b)
        return len(b)


@dataclass(frozen=True)
class Layer:
    """A layer blob in the store: digest/size of the gzip blob, diff_id of the tar inside."""

    digest: str      # hex of the compressed blob (store key, OCI descriptor digest)
    size: int
    diff_id: str     # hex of the uncompressed tar

    def as_record(self) -> dict[str, object]:
        return {"digest": self.digest, "size": self.size, "diff_id": self.diff_id}


def _size(e: Entry) -> int:
    if e.kind != "file":
        return 0
    return len(e.data) if e.data is not None else os.path.getsize(e.src or "")


def write_layer(store: Store, entries: Iterable[Entry], mtime: int = 0, level: int = 6,
                label: str = "layer") -> Layer:
    """Write entries as a deterministic tar.gz blob into the store (progress: bytes, rate, ETA)."""
    items = normalise(entries)
    sizes = [_size(e) for e in items]
    with store.blob_writer() as blob, ui.transfer(label, sum(sizes)) as bar:
        compressed = _HashingWriter(blob.write)
        gz = gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0, compresslevel=level)
        plain = _HashingWriter(gz.write)
        tar = tarfile.open(fileobj=plain, mode="w|", format=tarfile.GNU_FORMAT)  # type: ignore[call-overload]
        for e, n in zip(items, sizes):
            _add(tar, e, mtime)
            if n:
                bar.advance(n)
        tar.close()
        gz.close()
    assert blob.digest == compressed.sha.hexdigest()
    return Layer(digest=blob.digest, size=compressed.size, diff_id=plain.sha.hexdigest())


def _add(tar: tarfile.TarFile, e: Entry, mtime: int) -> None:
    ti = tarfile.TarInfo(e.path)  # tarfile adds the "/" of directories itself
    ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = mtime, e.owner, e.owner, "", ""
    ti.mode = e.resolved_mode()
    if e.kind == "dir":
        ti.type = tarfile.DIRTYPE
        tar.addfile(ti)
    elif e.kind == "symlink":
        ti.type, ti.linkname = tarfile.SYMTYPE, e.target
        tar.addfile(ti)
    elif e.data is not None:
        ti.size = len(e.data)
        tar.addfile(ti, io.BytesIO(e.data))
    else:
        assert e.src is not None, e.path
        with open(e.src, "rb") as f:
            ti.size = os.fstat(f.fileno()).st_size
            tar.addfile(ti, f)


def read_layer_names(blob: BinaryIO) -> list[str]:
    """Entry names of a tar.gz layer (for tests and `--explain` listings)."""
    with tarfile.open(fileobj=blob, mode="r:gz") as t:
        return t.getnames()
