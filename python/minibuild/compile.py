"""Compile one CUDA translation unit into a cached object, and link objects into a module.

Why header-aware two-step keys (ccache's "direct mode"): a unit's object depends on every header
it includes, but which headers those are is only known after preprocessing. So:
  key1  = hash(source content, flags, defines, include dirs, gencode, toolchain)
  action "headers"+key1 = the logical header names the last compile's depfile (-MD) listed
  key   = hash(key1 inputs + (header name, content hash) for each of those headers)
Lookup rehashes the listed headers (stat cache: unchanged files are not reread) and checks the action
cache under `key`; a miss compiles with -MD and records the new list. System and CUDA headers are not
listed: the toolchain fingerprint (nvcc release, host compiler) stands for them.

Paths never enter keys: files are named logically - repo-relative (`kernels/rmsnorm.cu`) or
`@<source>/<path>` inside a pinned tree - and builds run with `-ffile-prefix-map` so objects do not
embed the store's location either. Compiles run under a per-key1 lock, so two builds on one store
compile each object once; output goes to a temp file that only becomes a blob when complete.
"""
from __future__ import annotations

import errno
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import actions, children
from .config import KernelSet
from .actions import Input, Task
from .hashing import canonical_key
from .store import Store
from .toolchain import Toolchain

PREFIX = "/mini-vllm"


class CompileError(RuntimeError):
    """nvcc failed; the message holds the command and the compiler's output tail."""


class CorruptTree(RuntimeError):
    """A file in an installed source tree no longer matches the tree's listing."""

    def __init__(self, source: str, rel: str) -> None:
        super().__init__(f"source tree @{source}: {rel} does not match its verified listing")
        self.source = source


@dataclass
class PathMap:
    """Logical <-> physical paths: '' is the repo root, '@name' a pinned source tree."""

    repo: Path
    trees: dict[str, Path] = field(default_factory=dict)           # name -> tree dir
    listings: dict[str, dict[str, str]] = field(default_factory=dict)

    def physical(self, logical: str) -> Path:
        if logical.startswith("@"):
            name, _, rel = logical[1:].partition("/")
            if name not in self.trees:
                raise KeyError(f"'{logical}': source '{name}' is not pinned or not fetched")
            return self.trees[name] / rel
        return self.repo / logical

    def logical(self, physical: str | os.PathLike[str]) -> str | None:
        p = os.path.realpath(physical)
        for name, root in self.trees.items():
            r = os.path.realpath(root)
            if p.startswith(r + os.sep):
                return f"@{name}/{p[len(r) + 1:]}"
        r = os.path.realpath(self.repo)
        if p.startswith(r + os.sep):
            return p[len(r) + 1:]
        return None  # system / CUDA header: covered by the toolchain fingerprint

    def digest(self, store: Store, logical: str) -> str | None:
        """Content digest of a logical file (None if missing); tree files checked against their listing."""
        try:
            d = store.stat_cache.digest(self.physical(logical))
        except (OSError, KeyError):
            return None
        if logical.startswith("@"):
            name, _, rel = logical[1:].partition("/")
            want = self.listings.get(name, {}).get(rel)
            if want is not None and want.split(":")[-1] != d:
                raise CorruptTree(name, rel)
        return d

    def prefix_map_flags(self) -> list[str]:
        maps = [f"{self.repo}={PREFIX}/repo"] + [f"{p}={PREFIX}/src/{n}" for n, p in self.trees.items()]
        return [f"-Xcompiler=-ffile-prefix-map={m}" for m in maps]


@dataclass
class ObjectPlan:
    kset: KernelSet
    unit: str
    key1_inputs: list[Input]
    task: Task | None               # None when no header list is known for key1 yet
    record: dict[str, Any] | None   # cached record (hit) or None (must compile)

    @property
    def name(self) -> str:
        return f"compile:{self.kset.name}:{self.unit}"

    @property
    def key1(self) -> str:
        return canonical_key([i.as_json() for i in self.key1_inputs])


def key1_inputs(store: Store, pm: PathMap, tc: Toolchain, ks: KernelSet, unit: str) -> list[Input]:
    d = pm.digest(store, unit)
    if d is None:
        raise FileNotFoundError(f"kernels.{ks.name}: source {unit} not found ({pm.physical(unit)})")
    return [Input("file", unit, d), Input("flags", "flags", list(ks.flags)), Input("flags", "defines", list(ks.defines)),
            Input("flags", "include_dirs", list(ks.include_dirs)), Input("flags", "gencode", list(ks.gencode)),
            *tc.inputs(ks.uses_torch)]


def header_list(store: Store, key1: str) -> list[str] | None:
    """Logical headers the last compile under key1 included (an action record: travels via the remote)."""
    rec = store.get_action(canonical_key(["headers", key1]))
    return list(rec["headers"]) if rec and isinstance(rec.get("headers"), list) else None


def header_inputs(store: Store, pm: PathMap, names: list[str]) -> list[Input]:
    return [Input("header", n, pm.digest(store, n)) for n in names]


def plan_object(store: Store, pm: PathMap, tc: Toolchain, ks: KernelSet, unit: str) -> ObjectPlan:
    k1 = key1_inputs(store, pm, tc, ks, unit)
    names = header_list(store, canonical_key([i.as_json() for i in k1]))
    if names is None:
        return ObjectPlan(ks, unit, k1, None, None)
    task = Task(f"compile:{ks.name}:{unit}", "compile", k1 + header_inputs(store, pm, names))
    return ObjectPlan(ks, unit, k1, task, actions.lookup(store, task))


def explain_object(store: Store, pm: PathMap, plan: ObjectPlan) -> list[str]:
    """Why plan must compile: diff against the last run (headers from that run if none known)."""
    task = plan.task
    if task is None:
        prev = store.get_meta("last-inputs", plan.name) or []
        names = [n for k, n, _ in prev if k == "header"]
        task = Task(plan.name, "compile", plan.key1_inputs + header_inputs(store, pm, names))
    return actions.explain(store, task)


def nvcc_command(tc: Toolchain, pm: PathMap, ks: KernelSet, unit: str, out: Path, dep: Path) -> list[str]:
    cmd = [tc.nvcc, "-c", str(pm.physical(unit)), "-o", str(out), "-MD", "-MF", str(dep)]
    for g in ks.gencode:
        cmd += ["-gencode", g]
    cmd += [*ks.flags] + [f"-D{d}" for d in ks.defines] + [f"-I{pm.physical(i)}" for i in ks.include_dirs]
    if tc.ccbin:
        cmd += ["-ccbin", tc.ccbin]
    return cmd + pm.prefix_map_flags()


_IO_FAILURES = {"No space left on device": errno.ENOSPC, "Read-only file system": errno.EROFS,
                "Disk quota exceeded": errno.EDQUOT}


def _raise_if_io_failure(output: str, where: Path) -> None:
    """nvcc failed because it could not write its output: that is the disk's fault, reported as such."""
    for text, code in _IO_FAILURES.items():
        if text in output:
            raise OSError(code, os.strerror(code), str(where))


def parse_depfile(text: str) -> list[str]:
    """Prerequisites of a make-style depfile (handles line continuations and escaped spaces)."""
    body = text.replace("\\\n", " ")
    _, _, deps = body.partition(": ")
    out, cur, i = [], "", 0
    while i < len(deps):
        c = deps[i]
        if c == "\\" and i + 1 < len(deps) and deps[i + 1] == " ":
            cur += " "
            i += 2
            continue
        if c.isspace():
            if cur:
                out.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    if cur:
        out.append(cur)
    return out


def compile_object(store: Store, pm: PathMap, tc: Toolchain, ks: KernelSet, unit: str) -> tuple[ObjectPlan, bool]:
    """Ensure the object for unit is cached: (plan with record, whether this call compiled it)."""
    plan = plan_object(store, pm, tc, ks, unit)
    if plan.record is not None:
        return plan, False
    with store.lock(f"compile:{plan.key1}"):
        plan = plan_object(store, pm, tc, ks, unit)  # another build may have made it meanwhile
        if plan.record is not None:
            return plan, False
        bdir = store.root / "build" / ks.name / plan.key1[:20]
        bdir.mkdir(parents=True, exist_ok=True)
        tmp_obj, dep = bdir / f".tmp-{os.getpid()}.o", bdir / f".tmp-{os.getpid()}.d"
        cmd = nvcc_command(tc, pm, ks, unit, tmp_obj, dep)
        store.log_event("compile_start", set=ks.name, unit=unit, key1=plan.key1)
        try:
            r = children.run(cmd, cwd=bdir)   # nvcc, cicc, ptxas die with the build
            if r.returncode != 0:
                _raise_if_io_failure(r.stdout + r.stderr, bdir)
                raise CompileError(f"{unit}: nvcc failed ({r.returncode})\n$ {shlex.join(cmd)}\n"
                                   f"{(r.stdout + r.stderr)[-4000:]}")
            names = sorted({n for p in parse_depfile(dep.read_text())[1:]
                            if (n := pm.logical(p if os.path.isabs(p) else bdir / p)) and n != unit})
            digest = store.put_file(tmp_obj)
        finally:
            for f in (tmp_obj, dep):
                f.unlink(missing_ok=True)
        task = Task(plan.name, "compile", plan.key1_inputs + header_inputs(store, pm, names))
        rec = {"blobs": [digest], "object": digest, "unit": unit, "headers": len(names)}
        store.put_action(task.key, rec)
        store.put_action(canonical_key(["headers", plan.key1]), {"headers": names})
        actions.record_inputs(store, task)
        store.log_event("compile", set=ks.name, unit=unit, key=task.key, object=digest)
        return ObjectPlan(ks, unit, plan.key1_inputs, task, rec), True


def link_task(tc: Toolchain, ks: KernelSet, objects: list[tuple[str, str]]) -> Task:
    """objects: (unit, object digest) in config order."""
    inputs = [Input("artefact", f"object {u}", d) for u, d in objects]
    inputs += [Input("flags", "link_flags", list(ks.link_flags)), Input("flags", "gencode", list(ks.gencode)),
               Input("config", "module", ks.module), *tc.inputs(ks.uses_torch)]
    return Task(f"link:{ks.name}", "link", inputs)


def link_module(store: Store, tc: Toolchain, ks: KernelSet, task: Task, objects: list[tuple[str, str]]) -> dict[str, Any]:
    """The action of a link task: nvcc -shared over the objects; returns the record."""
    ldir = store.root / "build" / ks.name / f"link-{task.key[:20]}"
    ldir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (_, d) in enumerate(objects):
        p = ldir / f"{i:03d}.o"
        p.unlink(missing_ok=True)
        os.symlink(store.blob_path(d), p)
        paths.append(str(p))
    out = ldir / f".tmp-{os.getpid()}.so"
    cmd = [tc.nvcc, "-shared", "-o", str(out), *paths, *ks.link_flags]
    for g in ks.gencode:
        cmd += ["-gencode", g]
    try:
        r = children.run(cmd, cwd=ldir)
        if r.returncode != 0:
            _raise_if_io_failure(r.stdout + r.stderr, ldir)
            raise CompileError(f"link {ks.module}: nvcc failed ({r.returncode})\n$ {shlex.join(cmd)}\n"
                               f"{(r.stdout + r.stderr)[-4000:]}")
        digest = store.put_file(out)
    finally:
        out.unlink(missing_ok=True)
    store.log_event("link", set=ks.name, module=ks.module, key=task.key, blob=digest)
    return {"blobs": [digest], "module": digest, "objects": [d for _, d in objects]}
