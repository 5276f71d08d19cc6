"""Load build_config.yaml, the single place where pins and knobs live.

Environment variables override a few keys so that CI and users can redirect state without editing
the file: MINI_VLLM_CACHE (store.local), MINI_VLLM_REMOTE_CACHE (store.remote).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]


class ConfigError(ValueError):
    """build_config.yaml is missing a key or holds a bad value; the message names the key."""


def load_config(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    path = Path(path) if path else REPO_ROOT / "build_config.yaml"
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    cfg.setdefault("store", {})
    if os.environ.get("MINI_VLLM_CACHE"):
        cfg["store"]["local"] = os.environ["MINI_VLLM_CACHE"]
    if os.environ.get("MINI_VLLM_REMOTE_CACHE"):
        cfg["store"]["remote"] = os.environ["MINI_VLLM_REMOTE_CACHE"]
    cfg["_root"] = str(path.resolve().parent)
    return cfg


def require(cfg: dict[str, Any], dotted: str) -> Any:
    """cfg value at 'a.b.c' or a ConfigError naming the missing key."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"build_config.yaml: missing key '{dotted}'")
        node = node[part]
    return node
