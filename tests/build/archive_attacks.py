"""Crafted hostile archives (made here, by the tests) and a before/after view of a directory.

The escape corpus chains symlinks that each look inside the tree: `l1/u -> ..` is, lexically, the tree
itself; `l2/u -> ../l1/u/..` is lexically `l1` but really the tree's parent; each further link climbs
one more level. A last link `esc -> lK/u/../<victim>` then looks like `lK/<victim>` but is K levels
above the tree, and a regular file named `esc` (or a file under a link-to-a-directory) is the write
that must never land there.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

Entry = tuple[tarfile.TarInfo, bytes | None]
PAYLOAD = b"PWNED by a hostile archive\n"


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", size: int = 0) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.size, ti.mode = kind, link, size, 0o644
    return ti


def link(name: str, target: str) -> Entry:
    return _info(name, tarfile.SYMTYPE, target), None


def hardlink(name: str, target: str) -> Entry:
    return _info(name, tarfile.LNKTYPE, target), None


def regular(name: str, data: bytes = PAYLOAD) -> Entry:
    return _info(name, size=len(data)), data


def climbing_links(depth: int) -> list[Entry]:
    """Links l1/u .. l{depth}/u; l{k}/u really is the tree's k-th ancestor (k-1 levels above for k=1)."""
    out = [link("l1/u", "..")]
    for k in range(2, depth + 1):
        out.append(link(f"l{k}/u", f"../l{k - 1}/u/.."))
    return out


def escape_entries(depth: int, victim: str, order: str, under: str = "") -> list[Entry]:
    """Entries that, extracted by a link-following writer, write PAYLOAD to `victim` `depth` levels above
    the directory `under` (a prefix such as "include/"; the tree's root by default).

    order: "links-first" (climbing links, the escape link, the file), "escape-first" (the escape link
    before the links it relies on), "via-dir" (a link to the ancestor directory, then a file under it),
    "hardlink" (the file arrives as a hard link to an ordinary file, named like the escape link).
    """
    climb = climbing_links(depth)
    top = f"l{depth}/u/.."                      # lexically l{depth}; really `depth` levels above the tree
    if order == "links-first":
        out = [regular("ok.h", b"ok\n"), *climb, link("esc", f"{top}/{victim}"), regular("esc")]
    elif order == "escape-first":
        out = [link("esc", f"{top}/{victim}"), *reversed(climb), regular("esc")]
    elif order == "via-dir":
        out = [*climb, link("up", top), regular(f"up/{victim}")]
    elif order == "hardlink":
        out = [regular("payload.h"), *climb, link("esc", f"{top}/{victim}"), hardlink("esc", under + "payload.h")]
    else:
        raise ValueError(order)
    return [(ti.replace(name=under + ti.name), data) for ti, data in out]


ORDERS = ("links-first", "escape-first", "via-dir", "hardlink")


def tar_bytes(entries: list[Entry], gz: bool = False, prefix: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in entries:
            ti = ti.replace(name=prefix + ti.name) if prefix else ti
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0) if gz else raw


def zero_bomb(size: int, name: str = "include/zeros.h") -> bytes:
    """A tar.gz holding one file of `size` zero bytes, built without holding it in memory twice."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w|") as tf:
        class Zeros(io.RawIOBase):
            left = size

            def readinto(self, b) -> int:  # type: ignore[override]
                n = min(len(b), self.left)
                b[:n] = bytes(n)
                self.left -= n
                return n
        tf.addfile(_info(name, size=size), Zeros())
    return buf.getvalue()


def many_files(n: int) -> bytes:
    return tar_bytes([regular(f"include/f{i:06d}.h", b"") for i in range(n)], gz=True)


def pax_bomb(size: int) -> bytes:
    """One tiny file whose pax header carries `size` bytes of comment (tarfile reads headers whole)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = _info("include/a.h", size=2)
        ti.pax_headers = {"comment": "x" * size}
        tf.addfile(ti, io.BytesIO(b"a\n"))
    return gzip.compress(buf.getvalue(), mtime=0)


def snapshot(root: Path, skip: Path | None = None) -> dict[str, str]:
    """path -> kind + content digest / link target, for everything under root (`skip` and below left out)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if skip is not None:
            dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "l:" + os.readlink(p)
            elif p.is_file():
                out[rel] = "f:" + hashlib.sha256(p.read_bytes()).hexdigest()
            elif p.is_dir():
                out[rel] = "d"
    return out
