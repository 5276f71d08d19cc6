"""`invoke cache --stats / --gc`: what the store holds, and pruning what no current build uses.

Why separate from store/: the store's job is correct reads and writes; deciding what is garbage is
policy. GC keeps every action record, blob and tree named by a root (`Store.set_root`, written by each
build), the blobs those actions name, anything used within `max_age_days`, and removes the rest plus
stale `.tmp-*` leftovers of killed builds - anywhere in the store (not inside installed source trees,
whose files are upstream's) and in the install directories (build/, build/ext or $MINI_VLLM_EXT_DIR).
It waits until no build holds the store's "in use" lock (every `invoke kernels` / `invoke image` run holds
it shared), so it never deletes a temp file a running build is still writing.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from .atomic import make_writable, unlink_quietly
from .config import Config
from .store import Store
from . import ui


def _size(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def store_stats(store: Store) -> dict[str, Any]:
    blobs = [p for p in store.blob_dir.iterdir() if not p.name.startswith(".tmp-")]
    actions = list(store.ac_dir.glob("*/*.json"))
    trees = [p for p in store.trees_dir.iterdir() if p.is_dir()]
    return {
        "root": str(store.root),
        "blobs": len(blobs), "blob_bytes": sum(p.stat().st_size for p in blobs),
        "actions": len(actions),
        "trees": len(trees), "tree_bytes": sum(_size(t) for t in trees),
        "roots": len(list(store.roots_dir.glob("*.json"))),
        "remote": getattr(store.remote, "url", None),
    }


def _live_set(store: Store, max_age_days: int) -> tuple[set[str], set[str], set[str]]:
    actions: set[str] = set()
    blobs: set[str] = set()
    trees: set[str] = set()
    for rp in store.roots_dir.glob("*.json"):
        try:
            doc = json.loads(rp.read_text())
        except ValueError:
            continue
        actions.update(doc.get("actions", []))
        blobs.update(doc.get("blobs", []))
        trees.update(doc.get("trees", []))
    cutoff = time.time() - max_age_days * 86400 if max_age_days > 0 else None
    for ap in store.ac_dir.glob("*/*.json"):
        if cutoff is not None and ap.stat().st_mtime >= cutoff:
            actions.add(ap.stem)
    for key in list(actions):
        rec = store.get_action(key)
        if rec:
            blobs.update(rec.get("blobs", []))
    if cutoff is not None:
        blobs.update(p.name for p in store.blob_dir.iterdir() if p.stat().st_mtime >= cutoff)
        trees.update(p.name for p in store.trees_dir.iterdir() if p.is_dir() and p.stat().st_mtime >= cutoff)
    return actions, blobs, trees


def _remove(p: Path) -> int:
    """Delete a file or directory tree; returns the bytes it held."""
    size = _size(p) if not p.is_symlink() else 0
    if p.is_dir() and not p.is_symlink():
        make_writable(p)
        shutil.rmtree(p, ignore_errors=True)
    else:
        unlink_quietly(p)
    return size


def _tmp_leftovers(top: Path, skip: Path | None = None) -> list[Path]:
    """`.tmp-*` entries under top (not descending into them, nor into `skip`'s subdirectories)."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(top):
        here = Path(dirpath)
        if skip is not None and here == skip:
            dirnames[:] = []                     # installed trees: upstream files, maybe named .tmp-x
        found += [here / f for f in filenames if f.startswith(".tmp-")]
        found += [here / d for d in dirnames if d.startswith(".tmp-")]
        dirnames[:] = [d for d in dirnames if not d.startswith(".tmp-")]
    return found


def sweep_leftovers(store: Store, install_dirs: list[Path] = ()) -> tuple[int, int]:
    """Remove every `.tmp-*` left by killed builds in the store and the install dirs: (count, bytes)."""
    count = size = 0
    found = _tmp_leftovers(store.root, skip=store.trees_dir)
    for d in install_dirs:
        if d.is_dir():
            found += _tmp_leftovers(d)
    for p in dict.fromkeys(found):
        size += _remove(p)
        count += 1
    return count, size


def collect_garbage(store: Store, max_age_days: int = 0, install_dirs: list[Path] = ()) -> dict[str, int]:
    removed = {"actions": 0, "blobs": 0, "trees": 0, "tmp": 0, "bytes": 0}
    def waiting() -> None:
        ui.info("gc: a build is using the store; waiting for it to finish")

    with store.lock("gc"), store.sole_use(on_wait=waiting):
        actions, blobs, trees = _live_set(store, max_age_days)
        for ap in store.ac_dir.glob("*/*.json"):
            if ap.stem not in actions:
                removed["bytes"] += ap.stat().st_size
                unlink_quietly(ap)
                removed["actions"] += 1
        for bp in store.blob_dir.iterdir():
            if bp.name.startswith(".tmp-") or bp.name not in blobs:
                removed["bytes"] += bp.stat().st_size
                unlink_quietly(bp)
                removed["blobs" if not bp.name.startswith(".tmp-") else "tmp"] += 1
        for tp in store.trees_dir.iterdir():
            if tp.is_dir() and tp.name not in trees:
                removed["bytes"] += _size(tp)
                store.remove_tree(tp.name)
                removed["trees"] += 1
        for junk in store.tmp.iterdir():
            removed["bytes"] += _remove(junk)
            removed["tmp"] += 1
        count, size = sweep_leftovers(store, list(install_dirs))
        removed["tmp"] += count
        removed["bytes"] += size
    return removed


def run_cache_command(store: Store, stats: bool, gc: bool, max_age_days: int,
                      install_dirs: list[Path] = (), root_from: str = "") -> None:
    if gc:
        r = collect_garbage(store, max_age_days, install_dirs)
        ui.out(f"gc: removed {r['actions']} action records, {r['blobs']} blobs, {r['trees']} trees, "
               f"{r['tmp']} leftovers ({_human(r['bytes'])})")
    if stats:
        s = store_stats(store)
        ui.out(f"store {s['root']}")
        ui.out(f"  blobs   {s['blobs']:>7}  {_human(s['blob_bytes'])}")
        ui.out(f"  actions {s['actions']:>7}")
        ui.out(f"  trees   {s['trees']:>7}  {_human(s['tree_bytes'])}")
        ui.out(f"  roots   {s['roots']:>7}")
        ui.out(f"  remote  {s['remote'] or '-'}")
        if root_from.startswith("$"):
            ui.out(f"  (from {root_from})")


def cache_command(cfg: Config, stats: bool = True, gc: bool = False, max_age_days: int = 0) -> None:
    """`invoke cache`: print stats and/or garbage-collect the store (and .tmp-* leftovers in build/)."""
    installs = [cfg.ext_dir, cfg.root / "build"]
    run_cache_command(Store.from_config(cfg.store), stats=stats, gc=gc, max_age_days=max_age_days,
                      install_dirs=installs, root_from=cfg.store.root_from)
