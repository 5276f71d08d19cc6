"""Layers of our own files: the server's Python packages (from git's index) and the kernel modules
(the files `invoke kernels` recorded in build/ext/manifest.json).

Why not "copy the directory": the directory holds whatever lies there. The server layer takes the
tracked files of its packages as staged (gitfiles.py); the modules layer takes manifest.json and
exactly the modules it names, each checked against the sha256 the kernel build recorded - anything
else in build/ext is left out and named. Both refuse secret-looking file names (images.refuse).
"""
from __future__ import annotations

import json
import tomllib
from typing import Any, Iterator

from .. import ui
from ..actions import Input
from . import gitfiles
from .layers import Context, Recipe, RecipeError, excluder
from .tarlayer import Entry


def _entry_points(ctx: Context) -> dict[str, str]:
    files = {f.path: f for f in gitfiles.tracked(ctx.root, "pyproject.toml")}
    if "pyproject.toml" not in files:
        return {}
    text = gitfiles.read_blobs(ctx.root, [files["pyproject.toml"].blob])[files["pyproject.toml"].blob]
    return dict(tomllib.loads(text.decode()).get("project", {}).get("scripts", {}))


def python_recipe(ctx: Context, spec: dict[str, Any]) -> Recipe:
    """Packages' tracked files into site-packages, their console scripts, and the non-root user."""
    src = spec["from"].strip("/")
    exclude = excluder(list(spec.get("exclude") or []))
    dest = spec["to"].replace("{site}", ctx.site()).strip("/")
    interp = ctx.profile.python
    packages = list(spec["packages"])
    user = spec.get("user") or {}
    files: list[tuple[str, gitfiles.TrackedFile]] = []       # (path inside the package dir, file)
    for pkg in packages:
        found = gitfiles.tracked(ctx.root, f"{src}/{pkg}")
        if not found:
            raise RecipeError(f"stage layer {spec['name']}: no tracked file under {src}/{pkg} (git ls-files)")
        files += [(f.path[len(src) + 1:], f) for f in found if not exclude(f.path)]
    gitfiles.check_refused([f.path for _, f in files], ctx.refuse, spec["name"],
                           "take it out of git's index (git rm --cached PATH) or rename it if it holds no secret")
    left_out = [p for p in gitfiles.not_staged(ctx.root, src) if not exclude(p)
                and any(p.startswith(f"{src}/{pkg}/") for pkg in packages)]
    if left_out:
        ui.warn(f"layer {spec['name']}: {len(left_out)} file(s) differ from git's index and are packed as staged "
                f"(or not at all, if untracked): {', '.join(left_out[:5])}{' ...' if len(left_out) > 5 else ''}"
                " - `git add` what belongs in the image")
    scripts = {n: ep for n, ep in _entry_points(ctx).items() if ep.split(".")[0].split(":")[0] in packages}
    inputs = [Input("file", f.path, [f.blob, f.executable, f.symlink]) for _, f in files]
    inputs += [Input("config", "scripts", scripts), Input("config", "python", interp),
               Input("config", "user", user), Input("config", f"{spec['name']}.to", dest)]

    def entries() -> Iterator[Entry]:
        blobs = gitfiles.read_blobs(ctx.root, [f.blob for _, f in files])
        for rel, f in files:
            if f.symlink:
                yield Entry(f"{dest}/{rel}", "symlink", target=blobs[f.blob].decode())
            else:
                yield Entry(f"{dest}/{rel}", "file", 0o755 if f.executable else 0o644, data=blobs[f.blob])
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
                  f"install {', '.join(packages)} (git index) into /{dest} with {', '.join(sorted(scripts)) or 'no scripts'}")


def modules_recipe(ctx: Context, spec: dict[str, Any]) -> Recipe:
    """manifest.json of `invoke kernels` and the modules it names (sha256-checked), nothing else."""
    src = ctx.path(spec["from"])
    dest = spec["to"].strip("/")
    mpath = src / "manifest.json"
    try:
        manifest = json.loads(mpath.read_text()) if mpath.is_file() else {}
    except ValueError as exc:
        raise RecipeError(f"{mpath}: not valid JSON ({exc}); rebuild it with `invoke kernels`") from None
    if not isinstance(manifest, dict) or not all(isinstance(m, dict) and isinstance(m.get("file"), str)
                                                 and isinstance(m.get("sha256"), str) for m in manifest.values()):
        raise RecipeError(f"{mpath}: not a kernels manifest (module -> {{file, sha256}}); rebuild it with `invoke kernels`")
    named = {"manifest.json"} | {m["file"] for m in manifest.values()}
    gitfiles.check_refused(sorted(named), ctx.refuse, spec["name"], f"it is named in {mpath}; rebuild with `invoke kernels`")
    inputs = [Input("config", f"{spec['name']}.to", dest)]
    for name, m in sorted(manifest.items()):
        f = src / m["file"]
        if "/" in m["file"] or not f.is_file():
            raise RecipeError(f"{mpath}: module {name} names {m['file']}, which is not a file in {src}; "
                              "rebuild with `invoke kernels`")
        got = ctx.stat.digest(f)
        if got != m["sha256"]:
            raise RecipeError(f"{f}: sha256 {got[:16]}... differs from manifest.json's {m['sha256'][:16]}... "
                              "(changed after the build); rebuild with `invoke kernels`")
        inputs.append(Input("file", str(f.relative_to(ctx.root) if f.is_relative_to(ctx.root) else f), got))
    if manifest:
        inputs.append(ctx.file_input(str(mpath)))
    extra = sorted(p.name for p in src.iterdir() if p.name not in named) if src.is_dir() else []
    note = "" if manifest else f"{spec['from']}/manifest.json is missing or empty: layer {spec['name']} carries no modules"
    if extra:
        note = (note + "; " if note else "") + (f"{spec['from']}: not named by manifest.json, left out: "
                                                 + ", ".join(extra[:8]) + (" ..." if len(extra) > 8 else ""))

    def entries() -> Iterator[Entry]:
        yield Entry(dest, "dir")
        for rel in sorted(named):
            if (src / rel).is_file():
                yield Entry(f"{dest}/{rel}", "file", 0o755 if rel.endswith(".so") else 0o644, src=str(src / rel))

    return Recipe(spec["name"], inputs, entries, f"copy the kernel modules of {spec['from']}/manifest.json to /{dest}",
                  note=note)
