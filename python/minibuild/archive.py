"""Safe extraction of source archives and directories into a staging tree.

Why our own extractor: a pinned source may come from any mirror, so its archive is untrusted input,
and it is written to disk before its tree hash can be checked. So:
* Nothing is written through a link. Every entry is created relative to directory descriptors opened
  from the tree's root down with O_NOFOLLOW (openat-style), files with O_CREAT|O_EXCL|O_NOFOLLOW: a
  component that is a symlink (however it got there, whatever it points to) stops the extraction, and a
  name that already exists is refused instead of replaced. So archives that chain links (`a/b -> ..`,
  `c -> a/b/../x`) and then write a file named like a link cannot touch anything outside the root.
* Absolute paths, `..` components, device files, fifos and other specials are refused; so are
  symlinks whose target leaves the tree (lexically up front, and really - following the links just
  made - once everything is written) and hard links to anything not already extracted.
* Caps (`Limits`: bytes, entries, path length) are checked while the archive streams, each entry's
  header before its data is read, and the decompressed stream itself is counted, so a gzip bomb or an
  archive of 200,000 files stops at the first breach instead of filling the disk.
The whole archive is refused (not skipped entry by entry) when one entry is bad. Only the exec bit of a
file's mode is kept (the tree hash ignores the rest), owners and times are not. `subtrees` restricts
extraction to the listed top paths (e.g. CUTLASS `include/`); `strip_marker` strips one leading
directory whose name contains it (GitHub archives wrap trees in REPO-COMMIT/).
"""
from __future__ import annotations

import bz2
import errno
import gzip
import lzma
import os
import posixpath
import stat
import tarfile
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import IO, Any, Iterable, Mapping

from .atomic import naming

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_HEADER_SLACK = 1536          # per entry: tar header, pax/long-name records and padding


class UnsafeArchive(ValueError):
    """The archive or directory holds an entry that could write outside the tree or is special."""


class ArchiveTooLarge(UnsafeArchive):
    """The archive breached one of its caps (Limits); extraction stopped there."""


@dataclass(frozen=True)
class Limits:
    """Caps for one source; defaults come from build_config.yaml `source_limits`, a pin may override."""
    max_bytes: int = 2 << 30        # file contents, all entries (selected or not)
    max_files: int = 200_000        # entries of any kind
    max_path: int = 1024            # characters in one entry's path

    def override(self, spec: Mapping[str, Any] | None, where: str = "limits") -> "Limits":
        """These limits with the keys of `spec` replaced (unknown keys and non-positive values refused)."""
        names = {f.name for f in fields(self)}
        spec = dict(spec or {})
        bad = sorted(set(spec) - names)
        if bad:
            raise ValueError(f"{where}: unknown key(s) {bad}; expected {sorted(names)}")
        for k, v in spec.items():
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{where}.{k}: expected a positive integer, got {v!r}")
        return replace(self, **spec)


class _Budget:
    def __init__(self, limits: Limits) -> None:
        self.limits, self.files, self.bytes = limits, 0, 0

    def entry(self, name: str, size: int) -> None:
        lim = self.limits
        self.files += 1
        if self.files > lim.max_files:
            raise ArchiveTooLarge(f"more than max_files={lim.max_files} entries (stopped at {name[:200]!r})")
        if len(name) > lim.max_path:
            raise ArchiveTooLarge(f"entry path of {len(name)} characters exceeds max_path={lim.max_path}: "
                                  f"{name[:80]!r}...")
        self.add(name, size)

    def add(self, name: str, size: int) -> None:
        lim = self.limits
        self.bytes += max(size, 0)
        if self.bytes > lim.max_bytes:
            raise ArchiveTooLarge(f"contents exceed max_bytes={lim.max_bytes} (stopped at {name[:200]!r}, "
                                  f"{size} bytes)")


class _CountedReader:
    """A read-only stream that raises once more than `cap` bytes were read (the decompressed tar)."""

    def __init__(self, raw: IO[bytes], cap: int) -> None:
        self.raw, self.cap, self.seen = raw, cap, 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n if n is not None and n >= 0 else self.cap + 1 - self.seen)
        self.seen += len(data)
        if self.seen > self.cap:
            raise ArchiveTooLarge(f"the decompressed archive exceeds {self.cap} bytes (max_bytes plus headers)")
        return data


class _Prefixed:
    """`head` (already read to sniff the compression) followed by the rest of `raw`."""

    def __init__(self, head: bytes, raw: IO[bytes]) -> None:
        self.head, self.raw = head, raw

    def read(self, n: int = -1) -> bytes:
        if self.head:
            if n is None or n < 0:
                out, self.head = self.head + self.raw.read(), b""
                return out
            out, self.head = self.head[:n], self.head[n:]
            return out + (self.raw.read(n - len(out)) if len(out) < n else b"")
        return self.raw.read(n)


def _decompressed(raw: IO[bytes]) -> IO[bytes]:
    head = raw.read(6)
    src: Any = _Prefixed(head, raw)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=src, mode="rb")  # type: ignore[return-value]
    if head.startswith(b"BZh"):
        return bz2.BZ2File(src, "rb")  # type: ignore[return-value]
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(src, "rb")  # type: ignore[return-value]
    return src


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


class _SafeTree:
    """Creates entries under `root` without ever following a symlink (see the module doc)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fd = os.open(root, _DIR_FLAGS)

    def close(self) -> None:
        os.close(self.fd)

    def _open_dir(self, parent: int, name: str, rel: str, create: bool) -> int:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(name, 0o755, dir_fd=parent)
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafeArchive(f"entry {rel!r} would be written through the symlink or file {name!r}") from None
            raise

    def _parent(self, rel: str, create: bool = True) -> tuple[int, str]:
        """(an open fd of rel's directory, rel's last component); the caller closes the fd."""
        *dirs, leaf = rel.split("/")
        fd = os.dup(self.fd)
        try:
            for d in dirs:
                nxt = self._open_dir(fd, d, rel, create)
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd, leaf

    def mkdir(self, rel: str) -> None:
        fd, leaf = self._parent(rel)
        try:
            os.close(self._open_dir(fd, leaf, rel, create=True))
        finally:
            os.close(fd)

    def write(self, rel: str, src: IO[bytes], executable: bool) -> None:
        fd, leaf = self._parent(rel)
        try:
            try:
                out = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                              0o755 if executable else 0o644, dir_fd=fd)
            except FileExistsError:
                raise UnsafeArchive(f"entry {rel!r} appears twice (or names an existing link); refused") from None
            with naming(self.root / rel), os.fdopen(out, "wb") as f:     # a full disk names the file
                while chunk := src.read(1 << 20):
                    f.write(chunk)
                os.fchmod(f.fileno(), 0o755 if executable else 0o644)
        finally:
            os.close(fd)

    def symlink(self, rel: str, target: str) -> None:
        fd, leaf = self._parent(rel)
        try:
            os.symlink(target, leaf, dir_fd=fd)
        except FileExistsError:
            raise UnsafeArchive(f"entry {rel!r} appears twice; refused") from None
        finally:
            os.close(fd)

    def open_regular(self, rel: str) -> IO[bytes] | None:
        """A regular file already extracted at rel, opened without following links (None otherwise)."""
        try:
            fd, leaf = self._parent(rel, create=False)
        except (FileNotFoundError, UnsafeArchive):
            return None
        try:
            f = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError:
            return None
        finally:
            os.close(fd)
        if not stat.S_ISREG(os.fstat(f).st_mode):
            os.close(f)
            return None
        return os.fdopen(f, "rb")


def _strip(name: str, top: str | None) -> str | None:
    if top is None:
        return name
    if name == top:
        return None
    return name[len(top) + 1:] if name.startswith(top + "/") else name


def extract_tar(fileobj: IO[bytes] | str | os.PathLike[str], dest: Path, subtrees: Iterable[str] = (),
                strip_marker: str | None = None, limits: Limits | None = None) -> None:
    """Extract a (possibly gzip/bzip2/xz-compressed) tar, streamed, into dest (see module doc).

    `fileobj` may be a path or any object with read() (an HTTP response, an S3 body): it is read once.
    """
    limits = limits or Limits()
    subs = [s.strip("/") for s in subtrees if s.strip("/") not in ("", ".")]
    own = not hasattr(fileobj, "read")
    raw: IO[bytes] = open(fileobj, "rb") if own else fileobj  # type: ignore[arg-type, assignment]
    tree = _SafeTree(dest)
    try:
        stream = _CountedReader(_decompressed(raw), limits.max_bytes + limits.max_files * _HEADER_SLACK)
        with tarfile.open(fileobj=stream, mode="r|") as tf:  # type: ignore[call-overload]
            members = list(_members(tf, tree, subs, strip_marker, _Budget(limits)))
    except (tarfile.TarError, EOFError, OSError, lzma.LZMAError) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise                      # a real I/O error (disk full, read-only): not the archive's fault
        raise UnsafeArchive(f"not a readable tar archive: {type(e).__name__}: {e}") from None
    finally:
        tree.close()
        if own:
            raw.close()
    _links_stay_inside(dest, members)


def _members(tf: tarfile.TarFile, tree: _SafeTree, subs: list[str], marker: str | None,
             budget: _Budget) -> Iterable[str]:
    top: str | None = None
    first = True
    for m in tf:
        budget.entry(m.name, m.size if m.isfile() else 0)
        name = _check_name(m.name)
        if first:
            first = False
            head = name.split("/")[0]
            if marker and marker in head:
                top = head
        rel = _strip(name, top)
        if not rel or not _select(rel, subs):
            if m.isdev() or m.isfifo():
                raise UnsafeArchive(f"device file or fifo in archive: {m.name!r}")
            continue
        if m.isdir():
            tree.mkdir(rel)
        elif m.isfile():
            src = tf.extractfile(m)
            assert src is not None
            tree.write(rel, src, bool(m.mode & 0o100))
        elif m.issym():
            _check_link_target(rel, m.linkname)
            tree.symlink(rel, m.linkname)
        elif m.islnk():
            target = _strip(_check_name(m.linkname), top)
            src_file = tree.open_regular(target) if target else None
            if src_file is None:
                raise UnsafeArchive(f"hard link {m.name!r} -> {m.linkname!r}: target not an extracted file")
            with src_file:
                st = os.fstat(src_file.fileno())
                budget.add(m.name, st.st_size)     # a hard link repeats its target's bytes on disk
                tree.write(rel, src_file, bool(st.st_mode & 0o100))
        else:
            raise UnsafeArchive(f"device file, fifo or special entry in archive: {m.name!r}")
        yield rel


def _inside(root: Path, p: Path) -> bool:
    real_root = os.path.realpath(root)
    real = os.path.realpath(p)
    return real == real_root or real.startswith(real_root + os.sep)


def _links_stay_inside(dest: Path, rels: Iterable[str]) -> None:
    """After writing (which never followed a link): every link, chains included, resolves inside."""
    for rel in rels:
        p = dest / rel
        if p.is_symlink() and not _inside(dest, p):
            raise UnsafeArchive(f"symlink {rel!r} leaves the tree")


def copy_tree(src: Path, dest: Path, subtrees: Iterable[str] = (), limits: Limits | None = None) -> None:
    """Copy a local directory mirror into dest with the same rules (and caps) as extract_tar."""
    subs = [s.strip("/") for s in subtrees if s.strip("/") not in ("", ".")]
    budget = _Budget(limits or Limits())
    src = Path(src)
    tree = _SafeTree(dest)
    copied: list[str] = []
    try:
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames[:] = sorted(d for d in dirnames if d != ".git" or Path(dirpath) != src)
            for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                p = Path(dirpath, name)
                rel = _check_name(p.relative_to(src).as_posix())
                if not _select(rel, subs):
                    continue
                st = os.lstat(p)
                budget.entry(rel, st.st_size if stat.S_ISREG(st.st_mode) else 0)
                if stat.S_ISLNK(st.st_mode):
                    target = os.readlink(p)
                    _check_link_target(rel, target)
                    tree.symlink(rel, target)
                elif stat.S_ISREG(st.st_mode):
                    with open(os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
                        tree.write(rel, f, bool(st.st_mode & 0o100))
                else:
                    raise UnsafeArchive(f"device file, fifo or socket in source directory: {rel!r}")
                copied.append(rel)
    finally:
        tree.close()
    _links_stay_inside(dest, copied)
