"""`invoke graph`: the task graph from pinned sources to rollout, as text, DOT and PNG.

Why it reads only configuration: the graph is what *would* be built, so it must print without a
toolchain, a store or network. Nodes: sources (pins), objects (one per unit), modules (one per kernel
set), image stages (images.stages file, parent links), rollout targets (cluster.targets). Objects
point at the sources their set includes (`@name/...`), modules at their objects, the image stage
that ships build/ext at every module, and each rollout target at the top stage.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from . import ui
from .config import Config
from .image.stages import load_stages, top_stage


def build_graph(cfg: Config) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """(node id -> label, edges (from, to)) for the whole pipeline."""
    nodes: dict[str, str] = {}
    edges: list[tuple[str, str]] = []
    for name, pin in cfg.sources.items():
        nodes[f"src:{name}"] = f"source {name} {pin.version or pin.commit[:12]}"
    modules: list[str] = []
    for name, ks in cfg.kernels.items():
        mod = f"mod:{ks.module}"
        nodes[mod] = f"module {ks.module}.so"
        modules.append(mod)
        for unit in ks.units:
            obj = f"obj:{name}:{unit}"
            nodes[obj] = f"object {unit}"
            edges.append((obj, mod))
            for s in ks.sources_used:
                edges.append((f"src:{s}", obj))
    stages = _image_stages(cfg)
    for stage, spec in stages.items():
        nodes[f"img:{stage}"] = f"image {stage}"
        if spec.get("parent"):
            edges.append((f"img:{spec['parent']}", f"img:{stage}"))
        if any(str(layer.get("from", "")).startswith("build/ext") for layer in spec.get("layers") or []):
            edges.extend((m, f"img:{stage}") for m in modules)
    top = top_stage(stages)
    for target in cfg.cluster.targets:
        nodes[f"roll:{target}"] = f"rollout {target}"
        if top:
            edges.append((f"img:{top}", f"roll:{target}"))
    return nodes, edges


def _image_stages(cfg: Config) -> dict[str, dict[str, Any]]:
    p = cfg.path(cfg.images.stages)
    return load_stages(p) if p.is_file() else {}


def to_dot(nodes: dict[str, str], edges: list[tuple[str, str]]) -> str:
    colors = {"src": "lightyellow", "obj": "white", "mod": "lightblue", "img": "lightgreen", "roll": "pink"}
    lines = ["digraph minivllm {", "  rankdir=LR;", "  node [shape=box, style=filled, fontname=Helvetica];"]
    for nid, label in nodes.items():
        lines.append(f'  "{nid}" [label="{label}", fillcolor={colors[nid.split(":")[0]]}];')
    for a, b in sorted(set(edges)):
        lines.append(f'  "{a}" -> "{b}";')
    return "\n".join(lines + ["}"]) + "\n"


def to_text(nodes: dict[str, str], edges: list[tuple[str, str]]) -> str:
    """Each node with what it depends on, in pipeline order."""
    deps: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        deps[b].append(a)
    order = ["src", "obj", "mod", "img", "roll"]
    out = []
    for kind in order:
        for nid in [n for n in nodes if n.startswith(kind + ":")]:
            ins = sorted(set(deps[nid]))
            short = ", ".join(nodes[d].split(" ", 1)[1] for d in ins[:6]) + (f", ... (+{len(ins) - 6})" if len(ins) > 6 else "")
            out.append(f"{nodes[nid]}" + (f"  <- {short}" if ins else ""))
    return "\n".join(out)


def show_graph(cfg: Config, dot: str | None = None, png: str | None = None) -> None:
    nodes, edges = build_graph(cfg)
    ui.out(to_text(nodes, edges))
    text = to_dot(nodes, edges)
    if dot:
        Path(dot).write_text(text)
        ui.info(f"wrote {dot}")
    if png:
        exe = shutil.which("dot")
        if not exe:
            raise SystemExit("graphviz 'dot' is not installed; cannot render a PNG (the DOT text works without it)")
        subprocess.run([exe, "-Tpng", "-o", png], input=text.encode(), check=True)
        ui.info(f"wrote {png}")
