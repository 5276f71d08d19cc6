"""Layer recipes: turn one `layers:` entry of images/stages.yaml into declared inputs + entries.

Why this split: a layer's *key* must be cheap to compute (a no-op `invoke image` hashes lock entries
and git index ids, nothing more), while its *entries* may be expensive (downloads, pip install,
reading gigabytes). A `Recipe` carries both: `inputs` (graph.Input, so `--explain` names the file,
wheel or lock entry that changed) and `entries()`, called only when the key misses the action cache.
Kinds: `base` (Debian .debs, here), `wheels` (a selection of the wheel lock, here), `python` and
`modules` (our own files, srclayers.py). A new stage is data only: stages.yaml names these kinds.
"""
from __future__ import annotations

import fnmatch
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..actions import Input
from ..config import Config, ImageProfile
from ..hashing import StatCache
from ..store import Store
from . import debbase, pylock, wheels
from .pylock import LockedWheel
from .tarlayer import Entry, tree_entries

WRITER_VERSION = 3   # bump when a recipe's output for the same inputs changes (3: dpkg db, git index)


@dataclass
class Recipe:
    name: str
    inputs: list[Input]
    entries: Callable[[], Iterable[Entry]]
    created_by: str
    note: str = ""            # said once when the layer is made (e.g. "build/ext is empty")
    cleanup: Callable[[], None] | None = None


class RecipeError(RuntimeError):
    """A stage definition names something that cannot become a layer."""


@dataclass
class Context:
    cfg: Config
    root: Path                  # the checkout
    store: Store
    profile_name: str
    profile: ImageProfile
    stat: StatCache
    stages: dict[str, Any] = field(default_factory=dict)
    refuse: list[str] = field(default_factory=list)      # secret-looking file names (images.refuse)
    _groups: dict[str, dict[str, list[LockedWheel]]] = field(default_factory=dict)

    def path(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else self.root / p

    def file_input(self, rel: str) -> Input:
        return Input("file", rel, self.stat.digest(self.path(rel)))

    def site(self) -> str:
        return self.profile.site_packages.strip("/")

    def lock_of(self, spec: dict[str, Any]) -> str:
        """The wheel lock a wheels layer reads: its own `lock:` or the profile's."""
        return str(spec.get("lock") or self.profile.wheels.lock).replace("{profile}", self.profile_name)

    def wheel_group(self, spec: dict[str, Any]) -> list[LockedWheel]:
        lock = self.lock_of(spec)
        if lock not in self._groups:
            self._groups[lock] = wheels.assign(self.stages, lock, pylock.read(self.path(lock)), self.lock_of)
        return self._groups[lock][spec["name"]]


def excluder(patterns: list[str]) -> Callable[[str], bool]:
    def excluded(rel: str) -> bool:
        name = rel.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatch(name, p) for p in patterns)
    return excluded


def base_recipe(ctx: Context, spec: dict[str, Any]) -> Recipe:
    base = ctx.profile.base
    if base.kind != "debian-debs":
        raise RecipeError(f"profile {ctx.profile_name}: base kind {base.kind!r} is not a layer recipe "
                          "(registry bases are pulled, see pull.py)")
    lock_rel, spec_rel = base.lock, base.spec
    lock = debbase.read_lock(ctx.path(lock_rel))
    base_spec = debbase.load_spec(ctx.path(spec_rel))
    inputs = [ctx.file_input(lock_rel)] + [Input("config", f"base.{k}", base_spec.get(k) or {})
                                           for k in ("dirs", "files", "concat")]
    return Recipe(spec["name"], inputs, lambda: debbase.base_entries(ctx.store, base_spec, lock),
                  f"mini-vllm base: {len(lock['packages'])} Debian {lock.get('suite', '')} packages from {lock_rel}")


def wheels_recipe(ctx: Context, spec: dict[str, Any]) -> Recipe | None:
    """The locked wheels this layer selects; None when it selects none (e.g. no CUDA wheels on CPU)."""
    group = ctx.wheel_group(spec)
    if not group:
        return None
    target = ctx.profile.target
    inputs = [Input("config", f"wheel {w.name}", f"{w.version} sha256:{w.sha256}") for w in group]
    inputs += [Input("config", "target", [target.python, target.glibc, target.arch]), Input("config", "site_packages", ctx.site()),
               Input("toolchain", "pip", wheels.pip_version())]
    tmp: list[Path] = []

    def entries() -> Iterator[Entry]:
        d = Path(tempfile.mkdtemp(prefix="wheels-", dir=ctx.store.tmp))
        tmp.append(d)
        wheels.install(ctx.store, group, d / "site", target)
        yield from tree_entries(d / "site", ctx.site(), excluder(["__pycache__", "*.pyc"]))

    size = sum(w.size for w in group) / 1e6
    return Recipe(spec["name"], inputs, entries,
                  f"pip install --require-hashes {len(group)} wheels ({size:,.0f} MB) of {ctx.lock_of(spec)}: "
                  + ", ".join(w.name for w in group[:6]) + (" ..." if len(group) > 6 else ""),
                  cleanup=lambda: [shutil.rmtree(p, ignore_errors=True) for p in tmp] and None)


def recipe_for(ctx: Context, spec: dict[str, Any]) -> Recipe | None:
    from .srclayers import modules_recipe, python_recipe

    makers: dict[str, Callable[[Context, dict[str, Any]], Recipe | None]] = {
        "base": base_recipe, "wheels": wheels_recipe, "python": python_recipe, "modules": modules_recipe}
    try:
        make = makers[spec["kind"]]
    except KeyError:
        raise RecipeError(f"unknown layer kind {spec.get('kind')!r} in {spec} (have: {', '.join(makers)})") from None
    return make(ctx, spec)


def torch_version(ctx: Context) -> str:
    """The torch version pinned by the profile's wheel lock ('' when unknown)."""
    try:
        for w in pylock.read(ctx.path(ctx.profile.wheels.lock)):
            if w.name == "torch":
                return w.version
    except (OSError, pylock.WheelLockError):
        pass
    return ""
