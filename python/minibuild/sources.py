"""Pinned third-party sources: fetch from any mirror, verify the extracted tree, install in the store.

Why trees and not archives: GitHub's tarballs, `git archive`, a local checkout and an S3 copy of
the same commit differ byte for byte but hold the same files. A pin therefore carries the sha256 of
the extracted file tree (hashing.tree_hash) of the selected subtrees, and any mirror that yields
that tree is as good as any other. A tree that hashes differently is refused with both hashes shown
and nothing is stored. Patches (part of the pin's identity) are applied after verification; the
store id of a patched tree is sha256(tree hash + patch digests).

Mirrors, tried in order (`--offline` keeps only the local ones):
1. a mirror directory (`--mirror-dir`, else $MINI_VLLM_MIRROR) holding
   `<name>-<commit>.tar[.gz]` or a `<name>-<commit>/` directory (bench/make_source_mirror.py),
2. the pin's `mirrors:` list: `file:///dir-or-tarball`, `https://...tar.gz`, `git+<url>`,
   `s3://bucket/key.tar`; `{repo}`, `{commit}`, `{name}` are substituted,
3. if the pin lists no mirrors: GitHub's archive URL and its git URL.
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import tempfile
import time
from urllib.parse import unquote
from pathlib import Path
from typing import Any

from . import ui
from .archive import Limits, copy_tree, extract_tar
from .config import Config, SourcePin
from .hashing import tree_hash_of_listing, tree_listing
from .atomic import make_writable
from .store import Store

DEFAULT_MIRRORS = ["https://codeload.github.com/{repo}/tar.gz/{commit}", "git+https://github.com/{repo}.git"]


class SourceError(RuntimeError):
    """No mirror produced the pinned tree; the message lists what each mirror did."""


Pin = SourcePin   # a pinned source as build_config.yaml's `sources:` declares it (config.py reads it)


def mirror_dir(cfg: Config, override: str | os.PathLike[str] | None = None) -> Path | None:
    """The mirror directory: a task's --mirror-dir, else $MINI_VLLM_MIRROR (read by config)."""
    return Path(override).expanduser().resolve() if override else cfg.mirror_dir


def candidates(pin: Pin, mdir: Path | None, offline: bool) -> list[str]:
    urls: list[str] = []
    if mdir:
        base = f"{pin.name}-{pin.commit}"
        for suffix in (".tar", ".tar.gz", ".tgz", ""):
            p = mdir / (base + suffix)
            if p.exists():
                urls.append(p.as_uri())
    for m in pin.mirrors or DEFAULT_MIRRORS:
        urls.append(m.format(repo=pin.repo, commit=pin.commit, name=pin.name))
    if offline:
        urls = [u for u in urls if u.startswith(("file://", "git+file://"))]
    return urls


def _materialize(url: str, pin: Pin, dest: Path, scratch: Path, limits: Limits) -> None:
    """Put the pin's subtrees from one mirror into dest (raises on any failure).

    Network archives are extracted as they stream (no download to disk first), so the caps in
    `limits` bound what a hostile mirror can make us read and write."""
    marker = pin.commit
    if url.startswith("git+"):
        _git_export(url[4:], pin, dest, scratch, limits)
    elif url.startswith("file://"):
        path = Path(unquote(url[7:]))
        if path.is_dir():
            copy_tree(path, dest, pin.subtrees, limits)
        else:
            extract_tar(path, dest, pin.subtrees, strip_marker=marker, limits=limits)
    elif url.startswith("s3://"):
        from .remote import open_s3_object

        with open_s3_object(url) as body:
            extract_tar(body, dest, pin.subtrees, strip_marker=marker, limits=limits)
    elif url.startswith(("https://", "http://")):
        import urllib.request  # only when a network mirror is tried

        with urllib.request.urlopen(url, timeout=60) as r:
            extract_tar(r, dest, pin.subtrees, strip_marker=marker, limits=limits)
    else:
        raise SourceError(f"unsupported mirror URL {url!r}")


def _git_export(url: str, pin: Pin, dest: Path, scratch: Path, limits: Limits) -> None:
    gdir = scratch / "git"
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}

    def git(*args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["git", "--git-dir", str(gdir), *args], check=True, env=env,
                              stderr=subprocess.PIPE, **kw)

    subprocess.run(["git", "init", "-q", "--bare", str(gdir)], check=True, env=env)
    try:
        git("fetch", "-q", "--depth", "1", url, pin.commit)
    except subprocess.CalledProcessError:
        git("fetch", "-q", url, "+refs/*:refs/remotes/m/*")  # servers that refuse fetch-by-sha
    archive = scratch / "git.tar"
    with open(archive, "wb") as f:
        git("archive", "--format=tar", pin.commit, "--", *(pin.subtrees or ["."]), stdout=f)
    extract_tar(archive, dest, pin.subtrees, limits=limits)


def _apply_patches(pin: Pin, tree: Path) -> None:
    for patch in pin.patches:
        r = subprocess.run(["patch", "-p1", "-s", "-f", "--no-backup-if-mismatch", "-d", str(tree),
                            "-i", str(pin.root / patch)], capture_output=True, text=True)
        if r.returncode != 0:
            raise SourceError(f"sources.{pin.name}: patch {patch} does not apply: {r.stdout}{r.stderr}")


def _listing_doc(tree: Path) -> dict[str, str]:
    doc: dict[str, str] = {}
    for kind, ex, value, rel in tree_listing(tree):
        doc[rel] = ("->" + value) if kind == "l" else (("x:" if ex == "x" else "") + value)
    return doc


def tree_changes(store: Store, tree_id: str) -> str | None:
    """How an installed tree differs from the listing recorded when it was verified (None: it does not).

    Cheap on a no-op build: file digests come from the store's stat cache (size, mtime, ctime, inode)."""
    listing, root = store.tree_listing(tree_id), store.tree_dir(tree_id)
    if listing is None or not root.is_dir():
        return "it is missing"
    seen = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = Path(dirpath, name)
            rel = p.relative_to(root).as_posix()
            want, st = listing.get(rel), os.lstat(p)
            if want is None:
                return f"{rel} was added"
            if want.startswith("->"):
                if not stat.S_ISLNK(st.st_mode) or os.readlink(p) != want[2:]:
                    return f"{rel} is not the symlink it was"
            elif not stat.S_ISREG(st.st_mode):
                return f"{rel} is no longer a regular file"
            elif want.startswith("x:") != bool(st.st_mode & 0o100) or store.stat_cache.digest(p) != want[-64:]:
                return f"{rel} changed"
            seen += 1
    return None if seen == len(listing) else f"{len(listing) - seen} file(s) were removed"


_LOCAL_WRITE_FAILURES = {errno.ENOSPC, errno.EROFS, errno.EDQUOT}


def _why(url: str, exc: Exception) -> str:
    """What one mirror did wrong, in a few words (a mirror's failure is said once, in the advice block)."""
    import urllib.error
    from urllib.parse import urlsplit

    host = urlsplit(url[4:] if url.startswith("git+") else url).hostname or url
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} from {host}"
    if isinstance(exc, urllib.error.URLError):
        return f"cannot reach {host} ({getattr(exc.reason, 'strerror', None) or exc.reason})"
    if isinstance(exc, subprocess.CalledProcessError):
        lines = [ln.strip() for ln in (exc.stderr or b"").decode(errors="replace").splitlines() if ln.strip()]
        return f"git {exc.cmd[3] if len(exc.cmd) > 3 else ''} failed: {lines[-1] if lines else f'exit {exc.returncode}'}"
    if isinstance(exc, TimeoutError):
        return f"no answer from {host} (timed out)"
    return str(exc) if isinstance(exc, SourceError) else f"{type(exc).__name__}: {exc}"


class FetchFailed(SourceError):
    """No mirror gave a pin's tree. The message is the whole advice block: what failed (each mirror once)
    and what to do - a mirror directory and how to make one, `--only ours`, `--offline`."""

    def __init__(self, pin: Pin, failures: list[tuple[str, str]], offline: bool, mdir: Path | None) -> None:
        self.pin, self.failures = pin, failures
        tried = [f"    {url}: {why}" for url, why in failures] or [
            "    (no mirror to try" + (" with --offline: only file:// mirrors and a mirror directory count)"
                                       if offline else ")")]
        if mdir is not None and not any(u.startswith(mdir.as_uri()) for u, _ in failures):
            tried.insert(0, f"    mirror directory {mdir}: holds no {pin.name}-{pin.commit}.tar[.gz] (or directory)")
        super().__init__("\n".join([
            f"cannot fetch the pinned source {pin.name} ({pin.repo} {pin.version or pin.commit[:12]}); nothing stored.",
            *tried,
            "  what to do (docs/build.md, Sources):",
            f"    - give a mirror directory: --mirror-dir DIR (or MINI_VLLM_MIRROR=DIR) holding {pin.name}-{pin.commit}.tar;",
            "      make it where GitHub is reachable: python bench/make_source_mirror.py --from-github --out DIR,",
            "      or run `invoke fetch` there and copy its store here (MINI_VLLM_CACHE=DIR)",
            "    - build without third-party sources: invoke kernels --only ours (FA3 needs them)",
            "    - --offline: use only the store and local mirrors, try no network",
        ]))


def ensure_source(store: Store, pin: Pin, offline: bool = False, mdir: Path | None = None) -> Path:
    """The installed tree of pin (fetched and verified if missing; `pin.limits` caps each mirror's archive)."""
    tid = pin.tree_id
    if store.has_tree(tid):
        return store.tree_dir(tid)
    with store.lock(f"tree:{tid}"):
        if store.has_tree(tid):
            return store.tree_dir(tid)
        urls = candidates(pin, mdir, offline)
        failures: list[tuple[str, str]] = []
        for url in urls:
            staged = store.staging_dir()
            try:
                t0 = time.monotonic()
                if not url.startswith(("file://", "git+file://")):
                    ui.info(f"fetching {pin.name} {pin.version or pin.commit[:12]} from {url} ...")
                tree = staged / "tree"
                tree.mkdir()
                _materialize(url, pin, tree, staged, pin.limits)
                got = tree_hash_of_listing(tree_listing(tree))
                if got != pin.tree_sha256:
                    raise SourceError(f"tree hash mismatch: expected {pin.tree_sha256}, got {got}")
                _apply_patches(pin, tree)
                store.install_tree(tree, tid, _listing_doc(tree))
                store.log_event("fetch", source=pin.name, url=url, tree=tid)
                ui.info(f"fetched {pin.name} {pin.version or pin.commit[:12]} from {url} "
                        f"({time.monotonic() - t0:.1f} s), tree {pin.tree_sha256[:12]} verified")
                return store.tree_dir(tid)
            except OSError as exc:
                if exc.errno in _LOCAL_WRITE_FAILURES:   # our disk, not the mirror: no other mirror helps
                    raise
                failures.append((url, _why(url, exc)))
            except Exception as exc:  # any mirror failure: noted (said once, below), the next one tried
                failures.append((url, _why(url, exc)))
            finally:
                if staged.exists():
                    make_writable(staged)
                    shutil.rmtree(staged, ignore_errors=True)
        raise FetchFailed(pin, failures, offline, mdir)


def fetch_all(cfg: Config, offline: bool = False, mirror: str | os.PathLike[str] | None = None,
              only: list[str] | None = None) -> dict[str, Path]:
    """`invoke fetch`: every pinned source (or `only` those) present and verified in the store."""
    store = Store.from_config(cfg.store)
    mdir = mirror_dir(cfg, mirror)
    out: dict[str, Path] = {}
    for name, pin in cfg.sources.items():
        if only is not None and name not in only:
            continue
        had = store.has_tree(pin.tree_id)
        out[name] = ensure_source(store, pin, offline=offline, mdir=mdir)
        if had:
            ui.info(f"{name}: {pin.version or pin.commit[:12]} already in the store (tree {pin.tree_id[:12]})")
    return out


def make_mirror_tarball(repo_git_dir: str | os.PathLike[str], pin: Pin, out_dir: Path) -> Path:
    """Write `<name>-<commit>.tar` of the pin's subtrees from a local git repository (mirror-making)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{pin.name}-{pin.commit}.tar"
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=out_dir)
    with os.fdopen(fd, "wb") as f:
        subprocess.run(["git", "--git-dir", str(repo_git_dir), "archive", "--format=tar", pin.commit, "--",
                        *(pin.subtrees or ["."])], stdout=f, check=True)
    os.replace(tmp, out)
    return out
