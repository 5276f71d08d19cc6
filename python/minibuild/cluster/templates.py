"""Placeholder filling and overlay merging for the templates under cluster/.

Its own room so that every renderer (model, stack, monitors, autoscaler, NodePool) can use it without
importing the model renderer, which itself composes the add-ons: the arrows stay one-way.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from minibuild.config import Config

_WHOLE = re.compile(r"^\$\{(\w+)\}$")
_PART = re.compile(r"\$\{(\w+)\}")
_DROP = object()


def template_dir(cfg: Config) -> Path:
    return cfg.root / "cluster"


def fill(node: Any, values: dict[str, Any]) -> Any:
    """Replace ${var} placeholders; a whole-value placeholder keeps the value's type, None drops the key."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            filled = fill(v, values)
            if filled is not _DROP:
                out[k] = filled
        return out
    if isinstance(node, list):
        return [x for x in (fill(v, values) for v in node) if x is not _DROP]
    if isinstance(node, str):
        whole = _WHOLE.match(node)
        if whole:
            value = values[whole.group(1)]
            return _DROP if value is None else copy.deepcopy(value)
        return _PART.sub(lambda m: str(values[m.group(1)]), node)
    return node


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge overlay into a copy of base (mappings merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for k, v in overlay.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out
