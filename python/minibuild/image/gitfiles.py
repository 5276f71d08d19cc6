"""Our own files enter an image from git's index only, and never a secret-looking one.

Why: a layer built from the working tree packs whatever happens to lie there - a developer's
`.env`, a `credentials` file, editor droppings - and ships it to every node. The index is what the
developer declared part of the project: `git ls-files -s` lists the tracked files with their blob
ids and modes (the layer key is built from those, so a no-op build reads no file content), and
`git cat-file --batch` gives the blob bytes as staged. Modified but unstaged files and untracked
files are not packed; the build says which. A tracked file whose *name* looks like a secret
(`images.refuse` in build_config.yaml: .env, *.pem, .netrc, credentials ...) stops the build with
its path and the pattern it matched - being tracked does not make a key safe to ship.
"""
from __future__ import annotations

import fnmatch
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable


class SourceFileError(RuntimeError):
    """The checkout cannot provide the image's files (not a git checkout, or a refused file)."""


@dataclass(frozen=True)
class TrackedFile:
    path: str          # relative to the checkout, POSIX
    blob: str          # git object id of the staged content
    executable: bool
    symlink: bool


def _git(root: Path, *args: str, stdin: bytes | None = None) -> bytes:
    try:
        proc = subprocess.run(["git", "-C", str(root), *args], input=stdin, capture_output=True, check=False)
    except OSError as exc:
        raise SourceFileError(f"git is needed to read the image's files from the index: {exc}") from None
    if proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        raise SourceFileError(f"{root} is not a git checkout (git {args[0]}: {msg[-1] if msg else proc.returncode}); "
                              "images take the server's files from git's index - clone the repository")
    return proc.stdout


def tracked(root: Path, subdir: str) -> list[TrackedFile]:
    """The index entries under subdir (sorted by path)."""
    out = []
    for rec in _git(root, "ls-files", "-s", "-z", "--", subdir).split(b"\0"):
        if not rec:
            continue
        meta, path = rec.split(b"\t", 1)
        mode, blob, stage = meta.decode().split()
        if stage != "0":
            raise SourceFileError(f"{path.decode()}: unresolved merge conflict in the index")
        if mode == "160000":           # a submodule: not a file
            continue
        out.append(TrackedFile(path.decode(), blob, mode == "100755", mode == "120000"))
    return sorted(out, key=lambda f: f.path)


def not_staged(root: Path, subdir: str) -> list[str]:
    """Files under subdir whose working-tree state is not what the index holds (modified or untracked)."""
    changed = _git(root, "diff", "--name-only", "-z", "--", subdir).split(b"\0")
    untracked = _git(root, "ls-files", "--others", "--exclude-standard", "-z", "--", subdir).split(b"\0")
    return sorted({p.decode() for p in changed + untracked if p})


def read_blobs(root: Path, blobs: Iterable[str]) -> dict[str, bytes]:
    """blob id -> content, with one `git cat-file --batch` process."""
    ids = sorted(set(blobs))
    if not ids:
        return {}
    raw = _git(root, "cat-file", "--batch", stdin=("\n".join(ids) + "\n").encode())
    out: dict[str, bytes] = {}
    pos = 0
    for oid in ids:
        nl = raw.index(b"\n", pos)
        head = raw[pos:nl].decode().split()
        if len(head) != 3 or head[1] != "blob":
            raise SourceFileError(f"git object {oid} is not a blob ({' '.join(head)})")
        size = int(head[2])
        out[head[0]] = raw[nl + 1:nl + 1 + size]
        pos = nl + 1 + size + 1
    return out


def refused(path: str, patterns: Iterable[str]) -> str | None:
    """The refuse pattern path's file name matches, else None."""
    name = path.rsplit("/", 1)[-1]
    for p in patterns:
        if fnmatch.fnmatchcase(name, p):
            return p
    return None


def check_refused(paths: Iterable[str], patterns: list[str], layer: str, fix: str) -> None:
    """Stop at the first path whose name looks like a secret; the message names it and the fix."""
    for p in paths:
        hit = refused(p, patterns)
        if hit:
            raise SourceFileError(f"{p}: refused - a secret-looking file (name matches {hit!r}, images.refuse) "
                                  f"would enter layer {layer}; {fix}")
