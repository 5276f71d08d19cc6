"""A small generic task layer over the action cache: declared inputs -> key -> record, with `explain`.

Why: compiles, links and image stages all follow the same rule - a task's key is a hash of *all* it
depends on (file contents, config values, toolchain fingerprint, upstream artefact digests), the same
key means the cached result is reused, and a user who sees work asks "why did this run?". Keeping
that rule in one place keeps keys and explanations consistent across `invoke kernels` and
`invoke image`.

Usage:
    inputs = [Input("file", "kernels/rmsnorm.cu", digest), Input("flags", "flags", ["-O3"]),
              Input("toolchain", "nvcc", "13.0"), Input("artefact", "objects", [d1, d2])]
    task = Task(name="compile:ours:kernels/rmsnorm.cu", kind="compile", inputs=inputs)
    rec = run_task(store, task, action)   # action() -> record dict with "blobs": [...]
    explain(store, task)                   # ["kernels/rmsnorm.cu content changed", ...]

The last inputs of each task *name* are kept in store meta ("last-inputs") so explain can diff them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .hashing import canonical_key
from .store import MissingBlob, Store

INPUT_KINDS = ("file", "header", "flags", "config", "toolchain", "artefact")


@dataclass(frozen=True)
class Input:
    """One declared input. `value` must be JSON-encodable (str, number, list of str...)."""

    kind: str
    name: str
    value: Any

    def as_json(self) -> list[Any]:
        return [self.kind, self.name, self.value]


@dataclass
class Task:
    name: str          # stable across runs ("compile:ours:kernels/rmsnorm.cu"): explain diffs by name
    kind: str          # what the action does ("compile", "link", "layer"); part of the key
    inputs: list[Input]
    deps: list[str] = field(default_factory=list)   # names of upstream tasks (for graphs)

    @property
    def key(self) -> str:
        return canonical_key({"kind": self.kind, "inputs": sorted(i.as_json() for i in self.inputs)})


def lookup(store: Store, task: Task) -> dict[str, Any] | None:
    """The cached record for task, if present and all the blobs it names are intact."""
    rec = store.get_action(task.key)
    if rec is None:
        return None
    try:
        for d in rec.get("blobs", []):
            store.blob_path(d)
    except MissingBlob:
        return None
    return rec


def record_inputs(store: Store, task: Task) -> None:
    store.put_meta("last-inputs", task.name, [i.as_json() for i in task.inputs])


def run_task(store: Store, task: Task, action: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """(record, ran): reuse the cached record or run action() under the key's lock and store it."""
    rec = lookup(store, task)
    if rec is not None:
        return rec, False
    with store.lock(task.key):
        rec = lookup(store, task)  # another process may have finished it while we waited
        if rec is not None:
            return rec, False
        rec = action()
        store.put_action(task.key, rec)
    record_inputs(store, task)
    return rec, True


def explain(store: Store, task: Task) -> list[str]:
    """Human-readable reasons why task's key differs from the last run of the same name."""
    prev = store.get_meta("last-inputs", task.name)
    if prev is None:
        return ["never built (no earlier run recorded)"]
    old = {(k, n): v for k, n, v in prev}
    new = {(i.kind, i.name): i.value for i in task.inputs}
    reasons: list[str] = []
    for (kind, name) in sorted(set(old) | set(new)):
        a, b = old.get((kind, name)), new.get((kind, name))
        if a != b:
            reasons.extend(_describe(kind, name, a, b))
    return reasons or ["inputs unchanged since the last run (cached result missing or evicted)"]


def _describe(kind: str, name: str, old: Any, new: Any) -> list[str]:
    if kind in ("file", "header"):
        label = f"header {name}" if kind == "header" else name
        if old is None:
            return [f"{label} added"]
        if new is None:
            return [f"{label} no longer used" if kind == "header" else f"{label} removed"]
        return [f"{label} content changed"]
    if kind == "flags" and isinstance(old, list) and isinstance(new, list):
        gone = [f for f in old if f not in new]
        came = [f for f in new if f not in old]
        word = name.rstrip("s") if name.endswith("s") else name
        if len(gone) == 1 and len(came) == 1:
            return [f"{word} {gone[0]} -> {came[0]}"]
        out = [f"{word} {f} removed" for f in gone] + [f"{word} {f} added" for f in came]
        return out or [f"{name} reordered"]
    if kind == "toolchain":
        return [f"toolchain {name} {old} -> {new}"]
    if kind == "artefact":
        return [f"input {name} rebuilt"]
    return [f"{name} {old!r} -> {new!r}"]
