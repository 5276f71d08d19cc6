"""The two entry points tasks.py calls: `build_images` (invoke image) and `lock_images` (--lock).

Why a separate module: it is the only place that combines building, writing results and pushing,
and the only one that prints the user-facing summary; the pieces below it stay usable on their own
(tests drive StageBuilder and push.push_stage directly).
"""
from __future__ import annotations

import time
from typing import Any

from .. import ui
from ..config import Config, PushConfig
from ..store import Store
from . import debbase, wheels
from .build import StageBuilder, default_tag, make_context
from .ecr import require_repositories
from .layers import Context
from .oci import Layout
from .pull import lock_registry_base
from .push import PushTarget, parse_target, push_stage
from .registry import RegistryClient, Retry
from .stages import ImageBuildError, stage_chain
from .upload import UploadRules


def build_images(cfg: Config, stage: str = "all", push: str | None = None, explain: bool = False,
                 dry_run: bool = False, store: Store | None = None, profile: str | None = None) -> dict[str, Any]:
    """Build `stage` and the stages below it (of `profile`, default images.profile); with `push`, push
    each to `{push}/{registry.prefix}{stage}:{tag}`.

    Returns {stage: result dict (as written to <out_dir>/<stage>.json)}, plus "_push" stats if pushed
    and "_ran" (the layers and stages that did work).
    """
    t0 = time.monotonic()
    ctx = make_context(cfg, store, profile)
    target = (parse_target(push, cfg.registry.default, cfg.registry.prefix, default_tag(ctx.root))
              if push else None)                 # a bad target fails before any work
    with ctx.store.in_use():         # gc waits for the build instead of deleting its temp files
        return _build_and_push(ctx, stage, target, explain, dry_run, t0)


def _build_and_push(ctx: Context, stage: str, target: PushTarget | None, explain: bool, dry_run: bool,
                    t0: float) -> dict[str, Any]:
    cfg = ctx.cfg
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
    if target is not None:
        results["_push"] = push_stages(ctx.store, Layout(out_dir / "oci"), chain, target, cfg.images.push)
        for name in chain:
            ref = target.reference(name)
            results[name] = builder.write_outputs(out_dir, name, reference=ref.by_digest(results[name]["digest"][7:]))
            ui.info(f"{name}: tagged {ref.host}/{ref.repo}:{ref.tag}")
    results["_ran"] = list(builder.ran)
    did = ", ".join(builder.ran) if builder.ran else "nothing to do: every stage up to date"
    ui.info(f"image ({ctx.profile_name}): {did} [{time.monotonic() - t0:.2f}s]")
    for name in chain:
        ui.out(f"{name}\t{results[name]['reference'] or results[name]['digest']}")
    return results


def push_stages(store: Store, layout: Layout, chain: list[str], target: PushTarget,
                push_cfg: PushConfig) -> dict[str, Any]:
    """Push the stages bottom-up, each to its own repository (upper ones mount the lower layers)."""
    require_repositories(target.host, [target.reference(n).repo for n in chain])
    rules = UploadRules.for_host(target.host, push_cfg)
    retry = Retry(push_cfg.retries, push_cfg.backoff_s, push_cfg.backoff_max_s)
    out = {}
    for name in chain:
        client = RegistryClient.for_host(target.host, retry=retry)
        try:
            out[name] = push_stage(store, layout, name, target.reference(name), client, rules).as_dict()
        finally:
            client.close()
    return out


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
    # The profile's lock (its index + find_links), then every layer with its own lock (router, gateway:
    # tools that pin their own dependencies), from the index alone; `pip_export:` also writes that lock
    # as a pip requirements file with hashes (./dev installs the tools' venvs from it).
    jobs = [(whl.requirements, ctx.lock_of({}), list(whl.find_links), None)]
    for _, spec in wheels.wheel_layers(ctx.stages):
        if spec.get("lock") and spec.get("requirements"):
            export = str(spec["pip_export"]).replace("{profile}", ctx.profile_name) if spec.get("pip_export") else None
            jobs.append((spec["requirements"], ctx.lock_of(spec), [], export))
    for reqs, lock_rel, find_links, export in jobs:
        got = wheels.lock_wheels(ctx.path(reqs), ctx.path(lock_rel), ctx.profile.target, whl.index, find_links)
        ui.info(f"{lock_rel}: {len(got)} wheels ({sum(w.size for w in got) / 1e6:,.0f} MB)")
        if export:
            wheels.export_requirements(got, ctx.path(export), lock_rel)
            ui.info(f"{export}: the same wheels as pip requirements with hashes")
