"""Safe extraction of source archives and directories into a staging tree.

Why our own extractor: a pinned source may come from any mirror, so its archive is untrusted input.
Every entry is checked before anything is written, and the whole archive is refused (not skipped
entry by entry) when one entry is bad:
* absolute paths and `..` components,
* symlinks whose target is absolute or leaves the tree, hard links to anything not already extracted,
* entries that would be written *through* an earlier symlink (the classic two-step escape),
* device files, fifos and other specials.
Only the exec bit of a file's mode is kept (the tree hash ignores the rest), owners and times are not.
`subtrees` restricts extraction to the listed top paths (e.g. CUTLASS `include/`); `strip_marker`
strips one leading directory whose name contains it (GitHub archives wrap trees in REPO-COMMIT/).
"""
from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile
from pathlib import Path
from typing import IO, Iterable


class UnsafeArchive(ValueError):
    """The archive or directory holds an entry that could write outside the tree or is special."""


def _check_name(name: str) -> str:
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive(f"absolute path in archive: {name!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"path with '..' in archive: {name!r}")
    if any("\n" in p or "\t" in p or "\0" in p for p in parts):
        raise UnsafeArchive(f"control character in archive path: {name!r}")
    return "/".join(parts)


def _check_link_target(rel: str, target: str) -> None:
    if target.startswith("/"):
        raise UnsafeArchive(f"symlink {rel!r} -> {target!r} points to an absolute path")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafeArchive(f"symlink {rel!r} -> {target!r} leaves the tree")


def _select(rel: str, subtrees: list[str]) -> bool:
    return not subtrees or any(rel == s or rel.startswith(s + "/") for s in subtrees)


def _no_symlink_parent(dest: Path, rel: str) -> None:
    parts = rel.split("/")[:-1]
    cur = dest
    for p in parts:
        cur = cur / p
        if cur.is_symlink():
            raise UnsafeArchive(f"entry {rel!r} would be written through the symlink {p!r}")


def _strip(name: str, marker: str | None, top: str | None) -> str | None:
    if top is None:
        return name
    if name == top:
        return None
    return name[len(top) + 1:] if name.startswith(top + "/") else name


def extract_tar(fileobj: IO[bytes] | str | os.PathLike[str], dest: Path, subtrees: Iterable[str] = (),
                strip_marker: str | None = None) -> None:
    """Extract a (possibly compressed) tar into dest, refusing unsafe entries (see module doc)."""
    subs = [s.strip("/") for s in subtrees if s.strip("/") not in ("", ".")]
    opened = tarfile.open(fileobj, "r:*") if not hasattr(fileobj, "read") else \
        tarfile.open(fileobj=fileobj, mode="r|*")
    with opened as tf:
        members = list(_members(tf, dest, subs, strip_marker))
    for rel in members:  # final check: every link really resolves inside (chains included)
        p = dest / rel
        if p.is_symlink() and not _inside(dest, p):
            raise UnsafeArchive(f"symlink {rel!r} leaves the tree")


def _members(tf: tarfile.TarFile, dest: Path, subs: list[str], marker: str | None) -> Iterable[str]:
    top: str | None = None
    first = True
    for m in tf:
        name = _check_name(m.name)
        if first:
            first = False
            head = name.split("/")[0]
            if marker and marker in head:
                top = head
        name2 = _strip(name, marker, top)
        if not name2 or not _select(name2, subs):
            if m.isdev() or m.isfifo():
                raise UnsafeArchive(f"device file or fifo in archive: {m.name!r}")
            continue
        _no_symlink_parent(dest, name2)
        out = dest / name2
        if m.isdir():
            out.mkdir(parents=True, exist_ok=True)
        elif m.isfile():
            out.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(m)
            assert src is not None
            with open(out, "wb") as f:
                shutil.copyfileobj(src, f, 1 << 20)
            os.chmod(out, 0o755 if m.mode & 0o100 else 0o644)
        elif m.issym():
            _check_link_target(name2, m.linkname)
            out.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(m.linkname, out)
        elif m.islnk():
            target = _strip(_check_name(m.linkname), marker, top)
            src_path = dest / target if target else None
            if not src_path or not src_path.is_file() or src_path.is_symlink():
                raise UnsafeArchive(f"hard link {m.name!r} -> {m.linkname!r}: target not an extracted file")
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src_path, out)
            os.chmod(out, src_path.stat().st_mode & 0o777)
        else:
            raise UnsafeArchive(f"device file, fifo or special entry in archive: {m.name!r}")
        yield name2


def _inside(root: Path, p: Path) -> bool:
    real_root = os.path.realpath(root)
    real = os.path.realpath(p)
    return real == real_root or real.startswith(real_root + os.sep)


def copy_tree(src: Path, dest: Path, subtrees: Iterable[str] = ()) -> None:
    """Copy a local directory mirror into dest with the same rules as extract_tar."""
    subs = [s.strip("/") for s in subtrees if s.strip("/") not in ("", ".")]
    src = Path(src)
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if d != ".git" or Path(dirpath) != src)
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = Path(dirpath, name)
            rel = _check_name(p.relative_to(src).as_posix())
            if not _select(rel, subs):
                continue
            st = os.lstat(p)
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(p)
                _check_link_target(rel, target)
                os.symlink(target, out)
            elif stat.S_ISREG(st.st_mode):
                shutil.copyfile(p, out)
                os.chmod(out, 0o755 if st.st_mode & 0o100 else 0o644)
            else:
                raise UnsafeArchive(f"device file, fifo or socket in source directory: {rel!r}")
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in filenames + dirnames:
            p = Path(dirpath, name)
            if p.is_symlink() and not _inside(dest, p):
                raise UnsafeArchive(f"symlink {p.relative_to(dest)} leaves the tree")
