"""The two entry points tasks.py calls: `build_images` (invoke image) and `lock_images` (--lock).

Why a separate module: it is the only place that combines building, writing results and pushing,
and the only one that prints the user-facing summary; the pieces below it stay usable on their own
(tests drive StageBuilder and push_image directly).
"""
from __future__ import annotations

import time
from typing import Any

from .. import ui
from ..config import Config
from ..store import Store
from . import debbase, wheels
from .build import StageBuilder, make_context
from .stages import ImageBuildError, stage_chain
from .pull import lock_registry_base
from .oci import Layout
from .registry import PushStats, Reference, RegistryClient, push_image


def build_images(cfg: Config, stage: str = "all", push: str | None = None, explain: bool = False,
                 dry_run: bool = False, store: Store | None = None, profile: str | None = None) -> dict[str, Any]:
    """Build `stage` and the stages below it (of `profile`, default images.profile); push the top one
    to `push` if given.

    Returns {stage: result dict (as written to <out_dir>/<stage>.json)}, plus "_push" stats if pushed.
    """
    t0 = time.monotonic()
    ctx = make_context(cfg, store, profile)
    target = Reference.parse(push) if push else None   # a bad reference fails before any work
    builder = StageBuilder(ctx, explain=explain, dry_run=dry_run)
    chain = stage_chain(builder.stages, stage)
    out_dir = ctx.path(cfg.images.out_dir)
    results: dict[str, Any] = {}
    for name in chain:
        img = builder.stage(name)
        if img is None:   # dry run: something would be built
            ui.info(f"stage {name}: would build")
            continue
        if dry_run:
            ui.info(f"stage {name}: up to date (sha256:{img.digest})")
            continue
        results[name] = builder.write_outputs(out_dir, name)
    ctx.store.stat_cache.save()
    if dry_run:
        return results
    top = chain[-1]
    if target is not None:
        stats = push_stage(ctx.store, Layout(out_dir / "oci"), top, target)
        results[top] = builder.write_outputs(out_dir, top, reference=target.by_digest(results[top]["digest"][7:]))
        results["_push"] = stats.as_dict()
    did = ", ".join(builder.ran) if builder.ran else "nothing to do: every stage up to date"
    ui.info(f"image ({ctx.profile_name}): {did} [{time.monotonic() - t0:.2f}s]")
    for name in chain:
        ui.out(f"{name}\t{results[name]['reference'] or results[name]['digest']}")
    return results


def push_stage(store: Store, layout: Layout, name: str, target: Reference,
               client: RegistryClient | None = None) -> PushStats:
    """Push one stage of the layout; remember which repository holds each blob (for mounts)."""
    client = client or RegistryClient.for_host(target.host)
    known: dict[str, str] = store.get_meta("registry-blobs", target.host) or {}
    try:
        digest = push_image(layout, name, target, client, mount_from=known)
    finally:
        client.close()
    doc = layout.read_json(digest)
    for d in doc["layers"] + [doc["config"]]:
        known[d["digest"].split(":", 1)[1]] = target.repo
    store.put_meta("registry-blobs", target.host, known)
    s = client.stats
    ui.info(f"pushed {name} to {target.host}/{target.repo}: {s.blobs_uploaded} blobs uploaded "
            f"({s.bytes_uploaded / 1e6:.1f} MB), {s.blobs_mounted} mounted, {s.blobs_present} already there")
    return s


def lock_images(cfg: Config, profile: str | None = None) -> None:
    """Re-resolve the profile's base and wheel locks (the only step that looks at indexes)."""
    ctx = make_context(cfg, profile=profile)
    base, whl = ctx.profile.base, ctx.profile.wheels
    if base.kind == "debian-debs":
        lock = debbase.lock_debian_base(ctx.path(base.spec), ctx.path(base.lock))
        ui.info(f"{base.lock}: {len(lock['packages'])} packages")
    elif base.kind == "registry":
        digest = lock_registry_base(base.ref, ctx.path(base.lock))
        ui.info(f"{base.lock}: {base.ref} -> sha256:{digest}")
    else:
        raise ImageBuildError(f"profile {ctx.profile_name}: unknown base kind {base.kind!r}")
    lines = wheels.lock_wheels(ctx.path(whl.requirements), ctx.path(whl.lock), list(ctx.profile.pip_args))
    ui.info(f"{whl.lock}: {len(lines)} wheels")
    for req, lock in wheels.stage_locks(ctx.path(cfg.images.stages), ctx.profile_name):   # router, gateway
        lines = wheels.lock_wheels(ctx.path(req), ctx.path(lock), wheels.pypi_only(ctx.profile.pip_args))
        ui.info(f"{lock}: {len(lines)} wheels")



