"""`invoke rollout / status / logs`: deploy the server to HyperPod (Kueue), EKS (Karpenter), Slurm or
local processes, wait until it serves, and explain failures.

This module only dispatches on the target; each target lives in its own module, and all of them
start from the same `Plan` (settings.py) so names, labels and ports agree.
"""
from __future__ import annotations

from typing import Any

from minibuild import ui
from minibuild.cluster.settings import KUBE_TARGETS, Plan, RolloutError, make_plan
from minibuild.config import ConfigError


def _backend(target: str):
    if target == "local":
        from minibuild.cluster import local as backend
    elif target == "slurm":
        from minibuild.cluster import slurm as backend
    else:
        from minibuild.cluster import kube as backend
    return backend


def rollout(cfg: dict[str, Any], target: str = "local", tp: int = 1, dry_run: bool = False,
            delete: bool = False, image: str | None = None, model: str | None = None) -> bool:
    """Render, apply, wait until serving (or delete what a rollout made). False on failure, said why."""
    try:
        # --delete needs no image: it selects by label / job name.
        plan = make_plan(cfg, target, tp, image=image if not delete else image or _any_digest(),
                         model=model)
        return _backend(target).rollout(cfg, plan, dry_run=dry_run, delete=delete)
    except (RolloutError, ConfigError) as exc:
        ui.console().print(f"[red]rollout {target} tp={tp}:[/] {exc}")
        return False


def _any_digest() -> str:
    """A placeholder digest reference for plans that never render an image (--delete)."""
    return "unused@sha256:" + "0" * 64


def plan_for(cfg: dict[str, Any], target: str, tp: int) -> Plan:
    """The plan of an existing rollout (status / logs / verify need names, not an image)."""
    return make_plan(cfg, target, tp, image=_any_digest() if target in KUBE_TARGETS else None)


def status(cfg: dict[str, Any], target: str = "local", tp: int = 1) -> None:
    try:
        _backend(target).status(cfg, plan_for(cfg, target, tp))
    except (RolloutError, ConfigError) as exc:
        ui.console().print(f"[red]status {target}:[/] {exc}")
        raise SystemExit(1) from exc


def logs(cfg: dict[str, Any], target: str = "local", tp: int = 1, tail: int = 100) -> None:
    try:
        _backend(target).logs(cfg, plan_for(cfg, target, tp), int(tail))
    except (RolloutError, ConfigError) as exc:
        ui.console().print(f"[red]logs {target}:[/] {exc}")
        raise SystemExit(1) from exc
