"""The stage definitions of images/stages.yaml: load them, order them by their `parent:` links.

Why here and nowhere else: the order of the stages (essentials -> cuda -> server) is data - each
stage names its parent - so no code repeats it. `invoke image --stage all` builds the top stage (the
end of the longest parent chain) and what it stands on; `invoke graph` draws the same chain.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class ImageBuildError(RuntimeError):
    """A stage cannot be built as configured; the message says which and why."""


def load_stages(path: Path) -> dict[str, dict[str, Any]]:
    """name -> definition, in file order; a parent that is not defined, or a cycle, is an error."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ImageBuildError(f"{path}: cannot read the stage definitions ({exc})") from None
    stages = {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}
    for name in stages:
        chain(stages, name, path)
    return stages


def chain(stages: dict[str, dict[str, Any]], stage: str, where: Path | str = "images/stages.yaml") -> list[str]:
    """The stage and its ancestors, the base first."""
    out = [stage]
    while stages[out[-1]].get("parent"):
        parent = stages[out[-1]]["parent"]
        if parent not in stages:
            raise ImageBuildError(f"{where}: stage {out[-1]!r} names parent {parent!r}, which is not defined")
        if parent in out:
            raise ImageBuildError(f"{where}: stages {' -> '.join(out + [parent])} form a cycle")
        out.append(parent)
    return out[::-1]


def top_stage(stages: dict[str, dict[str, Any]]) -> str | None:
    """The end of the longest parent chain (the last such in file order): what `--stage all` builds."""
    best: str | None = None
    for name in stages:
        if best is None or len(chain(stages, name)) >= len(chain(stages, best)):
            best = name
    return best


def stage_chain(stages: dict[str, dict[str, Any]], stage: str) -> list[str]:
    """`stage` ("all": the top stage) and the stages below it, the base first."""
    if stage == "all":
        stage = top_stage(stages) or ""
    if stage not in stages:
        raise ImageBuildError(f"unknown stage {stage!r} (have: {', '.join(stages)}, all)")
    return chain(stages, stage)


def carries_python(sdef: dict[str, Any]) -> bool:
    """The stage adds our Python packages (a `python` layer): its image names the git revision."""
    return any(layer.get("kind") == "python" for layer in sdef.get("layers") or [])
