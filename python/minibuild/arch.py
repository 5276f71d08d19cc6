"""The house drawn from its imports: rooms (second-level modules of python/) and the arrows between them.

Why from the imports: a picture drawn by hand goes stale the day someone adds an import; this one is
read from the code with `ast` (nothing imported or run), so `invoke graph --imports` redraws it and a
test compares the committed DOT with the code. The builder (python/minibuild) and the server
(python/mini_vllm) are two clusters; an arrow between them would be an import across the line that must
not exist. The builder reaches the server only as a process (`python -m mini_vllm...`): those arrows
are drawn dashed, found as the module names in the builder's command lines.
"""
from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

PACKAGES = {"minibuild": "the builder (invoke tasks' library)", "mini_vllm": "the server (runtime)"}
_RUNS = re.compile(r"^mini_vllm(\.\w+)+$")


def module_name(python_root: Path, path: Path) -> str:
    parts = list(path.relative_to(python_root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path, module: str) -> set[str]:
    """Absolute dotted names `module` (the file at `path`) imports; relative imports resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def process_targets(path: Path) -> set[str]:
    """Server modules the file runs as processes (`-m mini_vllm.x` in a command line it builds)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and _RUNS.match(n.value)}


def room(name: str) -> str | None:
    """minibuild.cluster.local -> minibuild.cluster; names outside our packages -> None."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] in PACKAGES and len(parts) > 1 else (parts[0] if parts[0] in PACKAGES else None)


def house(python_root: Path, tasks: Path | None = None) -> tuple[set[str], set[tuple[str, str]], set[tuple[str, str]]]:
    """(rooms, import arrows, process arrows) between rooms; `tasks` (tasks.py) is a room of its own."""
    files = {module_name(python_root, p): p for p in sorted(python_root.rglob("*.py"))
             if "__pycache__" not in p.parts and p.relative_to(python_root).parts[0] in PACKAGES}
    if tasks is not None:
        files["tasks"] = tasks
    known = {room(m) for m in files if m not in PACKAGES and m != "tasks"}
    rooms, imports, runs = set(), set(), set()
    for mod, path in files.items():
        src = "tasks" if mod == "tasks" else room(mod)
        if src is None or src in PACKAGES:
            continue                         # the packages' own __init__: no room of its own
        rooms.add(src)
        for name in imported_names(path, mod):
            dst = room(name)
            if dst != src and (dst in known or (dst in PACKAGES and dst != src.split(".")[0])):
                imports.add((src, dst))      # (`from pkg import name` names a room only if it is a module)
        if not src.startswith("mini_vllm"):
            runs.update((src, room(t) or t) for t in process_targets(path))
    rooms.update(d for _, d in imports | runs)
    return rooms, imports, runs


def foundations(imports: set[tuple[str, str]], min_users: int = 6) -> set[str]:
    """Rooms that import no other room and that many rooms use (ui, hashing...): the picture lists them
    once instead of drawing an arrow from every user."""
    users: dict[str, int] = {}
    for _, b in imports:
        users[b] = users.get(b, 0) + 1
    importers = {a for a, _ in imports}
    return {r for r, n in users.items() if n >= min_users and r not in importers}


def to_dot(rooms: set[str], imports: set[tuple[str, str]], runs: set[tuple[str, str]]) -> str:
    base = foundations(imports)
    imports = {(a, b) for a, b in imports if b not in base}
    lines = ["digraph house {", '  rankdir=LR; newrank=true; node [shape=box, style="rounded,filled", '
             'fontname=Helvetica, fontsize=11, fillcolor=white]; edge [color=gray40];']
    if "tasks" in rooms:
        lines.append('  "tasks" [label="tasks.py", fillcolor=lightyellow];')
    for pkg, label in PACKAGES.items():
        lines += [f'  subgraph "cluster_{pkg}" {{', f'    label="python/{pkg}: {label}"; style=rounded; '
                  f'color={"steelblue" if pkg == "minibuild" else "darkgreen"};']
        lines += [f'    "{r}" [label="{r.split(".", 1)[1]}"];' for r in sorted(rooms - base)
                  if r.startswith(pkg + ".")]
        used = sorted(r.split(".", 1)[1] for r in base if r.startswith(pkg + "."))
        if used:
            lines.append(f'    "{pkg}.foundations" [label="used by most rooms (arrows left out):\\n'
                         f'{", ".join(used)}", shape=note, fillcolor=gray95];')
        lines.append("  }")
    lines += [f'  "{a}" -> "{b}";' for a, b in sorted(imports)]
    lines += [f'  "{a}" -> "{b}" [style=dashed, color=darkgreen, label="runs"];' for a, b in sorted(runs)]
    return "\n".join(lines + ["}"]) + "\n"


def crossings(imports: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """Import arrows between the builder and the server (there must be none)."""
    return sorted((a, b) for a, b in imports if a.split(".")[0] in PACKAGES and b.split(".")[0] in PACKAGES
                  and a.split(".")[0] != b.split(".")[0])


def draw(repo: Path, out_dot: Path, out_svg: Path | None) -> str:
    """Write the DOT (and the SVG, with graphviz's dot) of the house; returns the DOT text."""
    text = to_dot(*house(repo / "python", repo / "tasks.py"))
    out_dot.write_text(text)
    if out_svg is not None:
        exe = shutil.which("dot")
        if not exe:
            raise RuntimeError("graphviz 'dot' is not installed (./dev installs it): the DOT file was written")
        subprocess.run([exe, "-Tsvg", "-o", str(out_svg)], input=text.encode(), check=True)
    return text


def draw_docs(repo: Path) -> None:
    """`invoke graph --imports`: redraw docs/architecture.{dot,svg} from the code and say what is there."""
    from . import ui

    dot, svg = repo / "docs" / "architecture.dot", repo / "docs" / "architecture.svg"
    rooms, imports, runs = house(repo / "python", repo / "tasks.py")
    draw(repo, dot, svg)
    ui.info(f"wrote {svg.relative_to(repo)} and {dot.relative_to(repo)}: {len(rooms)} rooms, "
            f"{len(imports)} import arrows, {len(runs)} process arrows, "
            f"{len(crossings(imports))} imports across the builder/server line")
