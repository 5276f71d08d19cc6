"""Layer recipes: turn one `layers:` entry of images/stages.yaml into declared inputs + entries.

Why this split: a layer's *key* must be cheap to compute (a no-op `invoke image` hashes lock files and
checkout files through the stat cache, nothing more), while its *entries* may be expensive (downloads,
pip install, reading gigabytes). A `Recipe` carries both: `inputs` (actions.Input, so `--explain` names
the file or lock that changed) and `entries()`, called only when the key misses the action cache.
"""
from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..config import Config, ImageProfile
from ..actions import Input
from ..hashing import StatCache
from ..store import Store
from . import debbase, wheels
from .tarlayer import Entry, tree_entries

WRITER_VERSION = 2   # bump when tarlayer's output for the same entries changes (2: symlinks 0777)


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

    def path(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else self.root / p

    def file_input(self, rel: str) -> Input:
        return Input("file", rel, self.stat.digest(self.path(rel)))

    def site(self) -> str:
        return self.profile.site_packages.strip("/")


def _excluder(patterns: list[str]) -> Callable[[str], bool]:
    def excluded(rel: str) -> bool:
        name = rel.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatch(name, p) for p in patterns)
    return excluded


def _tree_files(ctx: Context, src: Path, exclude: Callable[[str], bool]) -> list[Input]:
    """One file Input per file under src (content digests via the stat cache)."""
    out: list[Input] = []
    for dirpath, dirnames, filenames in os.walk(src):
        rel_dir = Path(dirpath).relative_to(src).as_posix()
        dirnames[:] = sorted(d for d in dirnames if not exclude(d if rel_dir == "." else f"{rel_dir}/{d}"))
        for n in sorted(filenames):
            rel = n if rel_dir == "." else f"{rel_dir}/{n}"
            if exclude(rel):
                continue
            full = Path(dirpath, n)
            shown = os.path.relpath(full, ctx.root)
            value = ("->" + os.readlink(full)) if full.is_symlink() else ctx.stat.digest(full)
            out.append(Input("file", shown, [value, bool(full.stat().st_mode & 0o111) if not full.is_symlink() else False]))
    return out


def base_recipe(ctx: Context, spec: dict[str, Any]) -> Recipe:
    base = ctx.profile.base
    if base.kind != "debian-debs":
        raise RecipeError(f"profile {ctx.profile_name}: base kind {base.kind!r} is not a layer recipe "
                          "(registry bases are pulled, see pull.py)")
    lock_rel, spec_rel = base.lock, base.spec
    lock = debbase.read_lock(ctx.path(lock_rel))
    base_spec = debbase.load_spec(ctx.path(spec_rel))
    inputs = [ctx.file_input(lock_rel), Input("config", "base.dirs", base_spec.get("dirs") or {}),
              Input("config", "base.files", base_spec.get("files") or {})]
    return Recipe(spec["name"], inputs, lambda: debbase.base_entries(ctx.store, base_spec, lock),
                  f"mini-vllm base: {len(lock['packages'])} Debian {lock.get('suite', '')} packages from {lock_rel}")


def wheels_recipe(ctx: Context, spec: dict[str, Any]) -> Recipe:
    # The profile's wheel lock, or the stage's own (`lock: images/router-{profile}.lock`, PyPI only).
    own = spec.get("lock")
    lock_rel = own.replace("{profile}", ctx.profile_name) if own else ctx.profile.wheels.lock
    lock_path = ctx.path(lock_rel)
    wheels.read_lock(lock_path)            # unresolved -> clear error before any work
    pip_args = wheels.pypi_only(ctx.profile.pip_args) if own else list(ctx.profile.pip_args)
    inputs = [ctx.file_input(lock_rel), Input("config", "pip_args", pip_args),
              Input("config", "site_packages", ctx.site()), Input("toolchain", "pip", wheels.pip_version())]
    tmp: list[Path] = []

    def entries() -> Iterator[Entry]:
        d = Path(tempfile.mkdtemp(prefix="wheels-", dir=ctx.store.tmp))
        tmp.append(d)
        wheels.install_wheels(lock_path, d / "site", pip_args)
        yield from tree_entries(d / "site", ctx.site(), _excluder(["__pycache__", "*.pyc"]))

    return Recipe(spec["name"], inputs, entries, f"pip install --require-hashes -r {lock_rel}",
                  cleanup=lambda: [shutil.rmtree(p, ignore_errors=True) for p in tmp] and None)


def tree_recipe(ctx: Context, spec: dict[str, Any]) -> Recipe:
    src = ctx.path(spec["from"])
    exclude = _excluder(list(spec.get("exclude") or []))
    dest = spec["to"].replace("{site}", ctx.site()).strip("/")
    files = _tree_files(ctx, src, exclude) if src.is_dir() else []
    note = "" if files else f"{spec['from']} is missing or empty: layer {spec['name']} carries no files"
    inputs = files + [Input("config", f"{spec['name']}.to", dest)]

    def entries() -> Iterator[Entry]:
        yield Entry(dest, "dir")
        if src.is_dir():
            yield from tree_entries(src, dest, exclude)

    return Recipe(spec["name"], inputs, entries, f"copy {spec['from']} to /{dest}", note=note)


def _entry_points(root: Path) -> dict[str, str]:
    doc = tomllib.loads((root / "pyproject.toml").read_text())
    return dict(doc.get("project", {}).get("scripts", {}))


def python_recipe(ctx: Context, spec: dict[str, Any]) -> Recipe:
    """Packages as files into site-packages, their console scripts, and the non-root user."""
    src = ctx.path(spec["from"])
    exclude = _excluder(list(spec.get("exclude") or []))
    dest = spec["to"].replace("{site}", ctx.site()).strip("/")
    interp = ctx.profile.python
    packages = list(spec["packages"])
    scripts = {n: ep for n, ep in _entry_points(ctx.root).items() if ep.split(".")[0].split(":")[0] in packages}
    user = spec.get("user") or {}
    inputs: list[Input] = []
    for pkg in packages:
        if not (src / pkg).is_dir():
            raise RecipeError(f"stage layer {spec['name']}: package {src / pkg} does not exist")
        inputs += _tree_files(ctx, src / pkg, exclude)
    inputs += [Input("config", "scripts", scripts), Input("config", "python", interp),
               Input("config", "user", user), Input("config", f"{spec['name']}.to", dest)]

    def entries() -> Iterator[Entry]:
        for pkg in packages:
            yield from tree_entries(src / pkg, f"{dest}/{pkg}", exclude)
        for name, ep in sorted(scripts.items()):
            mod, _, func = ep.partition(":")
            text = (f"#!{interp}\nimport sys\nfrom {mod} import {func}\n\n"
                    f"if __name__ == '__main__':\n    sys.exit({func}())\n")
            yield Entry(f"{spec['scripts_dir']}/{name}", "file", 0o755, data=text.encode())
        if user:
            uid, name, home = int(user["uid"]), user["name"], user["home"].strip("/")
            yield Entry("etc/passwd", "file", data=(f"root:x:0:0:root:/root:/bin/sh\n"
                                                   f"{name}:x:{uid}:{uid}::/{home}:/usr/sbin/nologin\n").encode())
            yield Entry("etc/group", "file", data=f"root:x:0:\n{name}:x:{uid}:\n".encode())
            yield Entry(home, "dir", 0o755, owner=uid)

    return Recipe(spec["name"], inputs, entries,
                  f"install {', '.join(packages)} into /{dest} with {', '.join(sorted(scripts)) or 'no scripts'}")


RECIPES: dict[str, Callable[[Context, dict[str, Any]], Recipe]] = {
    "base": base_recipe, "wheels": wheels_recipe, "tree": tree_recipe, "python": python_recipe,
}


def recipe_for(ctx: Context, spec: dict[str, Any]) -> Recipe:
    try:
        make = RECIPES[spec["kind"]]
    except KeyError:
        raise RecipeError(f"unknown layer kind {spec.get('kind')!r} in {spec}") from None
    return make(ctx, spec)


def torch_version(ctx: Context) -> str:
    """The torch version pinned by the profile's wheel lock ('' when unknown)."""
    try:
        for line in ctx.path(ctx.profile.wheels.lock).read_text().splitlines():
            if line.startswith("torch=="):
                return line.split()[0].split("==", 1)[1]
    except OSError:
        pass
    return ""
