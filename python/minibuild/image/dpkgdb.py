"""Read .deb archives and write the dpkg database that says which packages a base holds.

Why: the base is assembled from pinned .debs without dpkg (no root, no maintainer scripts), so
nothing would record what was installed - and image scanners (ECR basic/enhanced scanning, Trivy,
Grype, Clair) find an image's Debian packages only through `/var/lib/dpkg/status` (plus
`/etc/os-release` for the release). We write what dpkg itself would have written for these
packages: one status paragraph per package (its control fields + `Status: install ok installed` +
its conffiles with their md5), and `info/<pkg>[:arch].{list,md5sums,conffiles}` (the file lists
scanners use to attribute files to packages). `dpkg-query --admindir` reads the result
(tests/image/test_debbase.py).
"""
from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .tarlayer import Entry

ADMIN = "var/lib/dpkg"


class DebError(RuntimeError):
    """A .deb cannot be read as a Debian package, or holds something a layer must not carry."""


@dataclass
class DebPackage:
    """One package: its control paragraph, md5sums/conffiles members and the paths it ships."""

    name: str
    arch: str
    control: str
    md5sums: bytes = b""
    conffiles: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)         # as in data.tar, '/usr/bin/x'
    conffile_md5: dict[str, str] = field(default_factory=dict)

    def field(self, name: str) -> str:
        for line in self.control.splitlines():
            if line.lower().startswith(name.lower() + ":"):
                return line.split(":", 1)[1].strip()
        return ""

    @property
    def info_name(self) -> str:
        """dpkg names the info files of Multi-Arch: same packages '<name>:<arch>'."""
        return f"{self.name}:{self.arch}" if self.field("Multi-Arch") == "same" else self.name


def ar_members(data: bytes, what: str) -> Iterator[tuple[str, bytes]]:
    if not data.startswith(b"!<arch>\n"):
        raise DebError(f"{what}: not a Debian package (ar magic missing)")
    pos = 8
    while pos + 60 <= len(data):
        head = data[pos:pos + 60]
        name = head[:16].decode().strip().rstrip("/")
        size = int(head[48:58].decode().strip())
        yield name, data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)


def _open_tar(name: str, body: bytes, what: str) -> tarfile.TarFile:
    if name.endswith(".zst"):
        raise DebError(f"{what}: zstd-compressed {name} is not supported (Debian's own packages use xz)")
    return tarfile.open(fileobj=io.BytesIO(body), mode="r:*")


def read_deb(deb: Path) -> tuple[DebPackage, list[Entry]]:
    """The package's metadata and the entries of its data.tar (modes kept, hard links as copies)."""
    members = dict(ar_members(deb.read_bytes(), deb.name))
    ctl_name = next((n for n in members if n.startswith("control.tar")), None)
    data_name = next((n for n in members if n.startswith("data.tar")), None)
    if ctl_name is None or data_name is None:
        raise DebError(f"{deb.name}: control.tar or data.tar member missing")
    with _open_tar(ctl_name, members[ctl_name], deb.name) as t:
        ctl = {m.name.removeprefix("./"): t.extractfile(m).read()  # type: ignore[union-attr]
               for m in t.getmembers() if m.isfile()}
    if "control" not in ctl:
        raise DebError(f"{deb.name}: no control file")
    control = ctl["control"].decode().rstrip("\n")
    pkg = DebPackage(name="", arch="", control=control, md5sums=ctl.get("md5sums", b""),
                     conffiles=[c for c in ctl.get("conffiles", b"").decode().splitlines() if c.startswith("/")])
    pkg.name, pkg.arch = pkg.field("Package"), pkg.field("Architecture")
    entries: list[Entry] = []
    with _open_tar(data_name, members[data_name], deb.name) as t:
        tmembers = t.getmembers()
        by_name = {m.name: m for m in tmembers}
        for m in tmembers:
            path = m.name.removeprefix("./").strip("/")
            pkg.paths.append("/" + path if path not in ("", ".") else "/.")
            if path in ("", "."):
                continue
            if m.isdir():
                entries.append(Entry(path, "dir", m.mode))
            elif m.issym():
                entries.append(Entry(path, "symlink", target=m.linkname))
            elif m.isfile() or m.islnk():
                src = by_name[m.linkname] if m.islnk() else m
                data = t.extractfile(src).read()  # type: ignore[union-attr]
                if "/" + path in pkg.conffiles:
                    pkg.conffile_md5["/" + path] = hashlib.md5(data).hexdigest()
                entries.append(Entry(path, "file", src.mode, data=data))
            else:
                raise DebError(f"{deb.name}: {m.name} is a device or fifo; refused")
    return pkg, entries


def status_paragraph(pkg: DebPackage) -> str:
    lines = pkg.control.splitlines()
    out = [lines[0], "Status: install ok installed", *lines[1:]]
    if pkg.conffiles:
        out.append("Conffiles:")
        out += [f" {c} {pkg.conffile_md5.get(c, 'newconffile')}" for c in pkg.conffiles]
    return "\n".join(out) + "\n"


def database_entries(pkgs: list[DebPackage]) -> Iterator[Entry]:
    """/var/lib/dpkg: status (paragraphs sorted by package) and info/* for every package."""
    ordered = sorted(pkgs, key=lambda p: (p.name, p.arch))
    yield Entry(f"{ADMIN}/status", "file", data="\n".join(status_paragraph(p) for p in ordered).encode())
    yield Entry(f"{ADMIN}/available", "file", data=b"")
    for d in ("updates", "triggers", "alternatives"):
        yield Entry(f"{ADMIN}/{d}", "dir")
    yield Entry(f"{ADMIN}/info/format", "file", data=b"1\n")   # db format 1: '<pkg>:<arch>' info names
    for p in ordered:
        base = f"{ADMIN}/info/{p.info_name}"
        yield Entry(f"{base}.list", "file", data=("\n".join(p.paths) + "\n").encode())
        if p.md5sums:
            yield Entry(f"{base}.md5sums", "file", data=p.md5sums)
        if p.conffiles:
            yield Entry(f"{base}.conffiles", "file", data=("\n".join(p.conffiles) + "\n").encode())
