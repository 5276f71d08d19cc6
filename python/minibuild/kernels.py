"""`invoke kernels`: pinned sources -> one cached object per translation unit -> linked modules.

Why this shape: planning is separated from doing. First every object and module is *planned*
(keys computed from content, cache looked up) - that is all a no-op run does, and it is what
`--dry-run` prints and `--explain` annotates. Then only the missing objects are compiled, in parallel
under a budget of cores *and* memory (an FA3 unit needs ~8 GB), modules whose objects changed are
relinked, and modules are installed atomically into build/ext (config: ext_dir) with a
manifest.json the runtime and the image builder read.
"""
from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Mapping

from . import actions, children, ui
from .compile import (CompileError, CorruptTree, ObjectPlan, PathMap, compile_object, explain_object,
                      link_module, link_task, plan_object)
from .hashing import canonical_key
from .config import Config, KernelSet
from .sources import SourceError, ensure_source, mirror_dir, tree_changes
from .atomic import atomic_write_bytes
from .store import Store
from .toolchain import ToolchainError, detect


def kernel_sets(sets: Mapping[str, KernelSet], only: list[str] | None = None) -> list[KernelSet]:
    unknown = sorted(set(only or []) - set(sets))
    if unknown:
        raise ValueError(f"unknown kernel set(s) {', '.join(unknown)}; build_config.yaml has: {', '.join(sets)}")
    return [ks for n, ks in sets.items() if not only or n in only]


class Budget:
    """At most `jobs` compiles at once, and their mem_gb_per_job summed within `mem_gb` (one always runs)."""

    def __init__(self, jobs: int, mem_gb: float) -> None:
        self.jobs, self.mem_gb = jobs, mem_gb
        self.running, self.used = 0, 0.0
        self.cond = threading.Condition()

    def acquire(self, gb: float) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.running == 0 or (self.running < self.jobs and self.used + gb <= self.mem_gb))
            self.running += 1
            self.used += gb

    def release(self, gb: float) -> None:
        with self.cond:
            self.running -= 1
            self.used -= gb
            self.cond.notify_all()


def mem_available_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / (1024 * 1024)
    except OSError:
        pass
    return 4.0


class Build:
    """One `invoke kernels` run: state shared by planning, compiling, linking and installing."""

    def __init__(self, cfg: Config, sets: list[KernelSet], offline: bool, dry_run: bool,
                 mirror: str | os.PathLike[str] | None = None) -> None:
        self.sets, self.offline, self.dry_run = sets, offline, dry_run
        self.store = Store.from_config(cfg.store)
        self.tc = detect(cfg.toolchain, self.store)
        self.mem_reserve_gb = cfg.toolchain.mem_reserve_gb
        self.pins = dict(cfg.sources)
        self.mdir = mirror_dir(cfg, mirror)
        self.pm = PathMap(cfg.root)
        self.missing_sources: list[str] = []
        self.out = cfg.ext_dir

    def prepare_sources(self) -> None:
        mdir = self.mdir
        for name in sorted({s for ks in self.sets for s in ks.sources_used}):
            if name not in self.pins:
                raise SourceError(f"a kernel set uses '@{name}' but build_config.yaml sources has no '{name}'")
            pin = self.pins[name]
            changed = tree_changes(self.store, pin.tree_id) if self.store.has_tree(pin.tree_id) else None
            if changed:     # never compile against it: the tree is fetched again from the mirrors
                if self.dry_run:
                    ui.out(f"source {name}: its installed tree changed after verification ({changed})")
                    self.missing_sources.append(name)
                    continue
                ui.warn(f"sources.{name}: the installed tree {pin.tree_id[:12]} changed after it was verified "
                        f"({changed}); deleting it and fetching it again")
                self.store.log_event("corrupt", what="tree", source=name, detail=changed)
                self.store.remove_tree(pin.tree_id)
            if not self.store.has_tree(pin.tree_id):
                if self.dry_run:
                    self.missing_sources.append(name)
                    continue
                ensure_source(self.store, pin, offline=self.offline, mdir=mdir)
            self.pm.trees[name] = self.store.tree_dir(pin.tree_id)
            self.pm.listings[name] = self.store.tree_listing(pin.tree_id) or {}

    def plan(self) -> list[ObjectPlan]:
        for attempt in (0, 1):
            try:
                return [plan_object(self.store, self.pm, self.tc, ks, u) for ks in self.sets
                        if not set(ks.sources_used) & set(self.missing_sources) for u in ks.units]
            except CorruptTree as exc:
                if attempt or self.dry_run:
                    raise
                ui.warn(f"{exc}; the tree is deleted and fetched again")
                self.store.log_event("corrupt", what="tree", source=exc.source)
                self.store.remove_tree(self.pins[exc.source].tree_id)
                self.prepare_sources()
        raise AssertionError("unreachable")

    def installed_ok(self, ks: KernelSet, digest: str) -> bool:
        """The installed module is this digest and its manifest entry carries this build's runtime limits."""
        try:
            if self.store.stat_cache.digest(self.out / f"{ks.module}.so") != digest:
                return False
            entry = json.loads((self.out / "manifest.json").read_text()).get(ks.module) or {}
        except (OSError, ValueError, AttributeError):
            return False
        return entry.get("sha256") == digest and entry.get("runtime", {}) == dict(ks.runtime)

    def install(self, ks: KernelSet, task: actions.Task, rec: dict[str, Any], objects: list[tuple[str, str]]) -> None:
        self.store.export_blob(rec["module"], self.out / f"{ks.module}.so", mode=0o755)
        mpath = self.out / "manifest.json"
        with self.store.lock(f"manifest:{mpath}"):
            try:
                manifest = json.loads(mpath.read_text())
            except (OSError, ValueError):
                manifest = {}
            manifest[ks.module] = {
                "file": f"{ks.module}.so", "sha256": rec["module"], "key": task.key, "set": ks.name,
                "objects": [{"unit": u, "sha256": d} for u, d in objects],
                "sources": {n: {"commit": self.pins[n].commit, "tree_sha256": self.pins[n].tree_id}
                            for n in ks.sources_used},
                "toolchain": {"nvcc": self.tc.nvcc_version, "arch": self.tc.arch},
                "runtime": dict(ks.runtime),
            }
            atomic_write_bytes(mpath, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())


def default_jobs(sets: list[KernelSet], reserve_gb: float) -> tuple[int, float]:
    return os.cpu_count() or 1, max(mem_available_gb() - reserve_gb, 0.5)


def _compile_all(b: Build, todo: list[ObjectPlan], jobs: int, mem_gb: float) -> tuple[dict[str, ObjectPlan], list[str]]:
    budget = Budget(jobs, mem_gb)
    done: dict[str, ObjectPlan] = {}
    errors: list[str] = []
    io_errors: list[OSError] = []
    lock = threading.Lock()

    with ui.progress("compiling", len(todo)) as bar:
        def one(p: ObjectPlan) -> None:
            budget.acquire(p.kset.mem_gb_per_job)
            try:
                t0 = time.monotonic()
                plan, ran = compile_object(b.store, b.pm, b.tc, p.kset, p.unit)
                with lock:
                    done[p.name] = plan
                ui.info(f"  {'compiled' if ran else 'cached  '} {p.kset.name}: {p.unit} ({time.monotonic() - t0:.1f} s)")
            except OSError as exc:          # the store or disk, not the unit: reported once, after the pool
                with lock:
                    io_errors.append(exc)
            except (CompileError, CorruptTree) as exc:
                with lock:
                    errors.append(str(exc))
            finally:
                budget.release(p.kset.mem_gb_per_job)
                bar.advance()

        children.allow()
        pool = ThreadPoolExecutor(max_workers=max(1, min(jobs, len(todo))))
        try:
            list(pool.map(one, todo))
        except BaseException:       # ^C or a crash: no compiler outlives this build, none starts
            children.stop()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown()
    if io_errors:
        raise io_errors[0]
    return done, errors


def build_kernels(cfg: Config, explain: bool = False, dry_run: bool = False, offline: bool = False,
                  jobs: int | None = None, only: list[str] | None = None,
                  mirror: str | os.PathLike[str] | None = None) -> bool:
    """Build (or check) every kernel set; True when all modules are built and installed.

    `mirror`: a directory of source tarballs tried first (--mirror-dir; default $MINI_VLLM_MIRROR)."""
    t0 = time.monotonic()
    with ExitStack() as held:        # the store's "in use" lock, for the whole run: gc waits for us
        try:
            b = Build(cfg, kernel_sets(cfg.kernels, only), offline=offline, dry_run=dry_run, mirror=mirror)
            held.enter_context(b.store.in_use())
            b.prepare_sources()
            plans = b.plan()
        except (ToolchainError, SourceError, ValueError, FileNotFoundError, CorruptTree, KeyError) as exc:
            ui.error(str(exc))
            return False
        except OSError as exc:          # a store it cannot write (read-only, full): one line, no traceback
            ui.error(ui.describe_os_error(exc))
            return False
        try:
            return _run(b, plans, explain, dry_run, jobs, t0)
        except OSError as exc:
            ui.error(ui.describe_os_error(exc))
            return False
        finally:
            b.store.stat_cache.save()


def _run(b: Build, plans: list[ObjectPlan], explain: bool, dry_run: bool, jobs: int | None, t0: float) -> bool:
    todo = [p for p in plans if p.record is None]
    if dry_run or explain:
        for name in b.missing_sources:
            ui.out(f"would fetch source {name} ({b.pins[name].commit[:12]}), then compile the units that use it")
        for p in todo:
            reasons = "; ".join(explain_object(b.store, b.pm, p))
            ui.out(f"{'would compile' if dry_run else 'compile'} {p.kset.name}: {p.unit}  [{reasons}]")
    by_set = {ks.name: [p for p in plans if p.kset is ks] for ks in b.sets}
    if dry_run:
        for ks in b.sets:
            stale = any(p.record is None for p in by_set[ks.name]) or ks.name in {
                k.name for k in b.sets if set(k.sources_used) & set(b.missing_sources)}
            if stale:
                ui.out(f"would link {ks.module} ({ks.name})")
            else:
                objs = [(p.unit, p.record["object"]) for p in by_set[ks.name]]  # type: ignore[index]
                task = link_task(b.tc, ks, objs)
                rec = actions.lookup(b.store, task)
                if rec is None:
                    ui.out(f"would link {ks.module} ({ks.name})  [{'; '.join(actions.explain(b.store, task))}]")
                elif not b.installed_ok(ks, rec["module"]):
                    ui.out(f"would install {ks.module}.so into {b.out}")
        if not todo and not b.missing_sources:
            ui.out("nothing to compile")
        return True

    compiled: list[str] = []
    if todo:
        n_jobs, mem = default_jobs(b.sets, b.mem_reserve_gb)
        n_jobs = jobs or n_jobs
        ui.info(f"compiling {len(todo)} of {len(plans)} objects, up to {n_jobs} jobs within {mem:.1f} GB")
        done, errors = _compile_all(b, todo, n_jobs, mem)
        if errors:
            for e in errors:
                ui.error(e)
            ui.error(f"{len(errors)} compile(s) failed; nothing was linked or installed for the affected modules")
            return False
        plans = [done.get(p.name, p) for p in plans]
        compiled = [p.name for p in todo]
        by_set = {ks.name: [p for p in plans if p.kset is ks] for ks in b.sets}

    linked, installed = [], []
    for ks in b.sets:
        objs = [(p.unit, p.record["object"]) for p in by_set[ks.name]]  # type: ignore[index]
        task = link_task(b.tc, ks, objs)
        if explain and actions.lookup(b.store, task) is None:
            ui.out(f"link {ks.module}  [{'; '.join(actions.explain(b.store, task))}]")
        try:
            rec, ran = actions.run_task(b.store, task, lambda: link_module(b.store, b.tc, ks, task, objs))
        except CompileError as exc:
            ui.error(str(exc))
            return False
        if ran:
            linked.append(ks.module)
        if not b.installed_ok(ks, rec["module"]):
            b.install(ks, task, rec, objs)
            installed.append(ks.module)
        keys = [task.key] + [p.task.key for p in by_set[ks.name] if p.task]
        keys += [canonical_key(["headers", p.key1]) for p in by_set[ks.name]]
        b.store.set_root(f"kernels:{ks.name}", actions=keys,
                         trees=[b.pins[n].tree_id for n in ks.sources_used])
    dt = time.monotonic() - t0
    if not compiled and not linked and not installed:
        ui.info(f"kernels: nothing to do - {len(plans)} objects and {len(b.sets)} modules up to date ({dt:.2f} s)")
    else:
        ui.info(f"kernels: compiled {len(compiled)} objects, linked {len(linked)} modules "
                f"({', '.join(linked) or '-'}), installed {len(installed)} into {b.out} ({dt:.1f} s)")
    return True
