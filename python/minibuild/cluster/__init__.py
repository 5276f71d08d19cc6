"""`invoke rollout / status / logs`: deploy the server to HyperPod (Kueue), EKS (Karpenter), Slurm or
local processes, wait until it serves, and explain failures.

This module only dispatches on the target; each target lives in its own module, and all of them
start from the same `Plan` (settings.py) so names, labels and ports agree.
"""
from __future__ import annotations

import json
from typing import Any

from minibuild import ui
from minibuild.cluster.settings import KUBE_TARGETS, Plan, RolloutError, make_plan
from minibuild.cluster.stack import with_stack
from minibuild.config import ConfigError


def _backend(target: str):
    if target == "local":   # replicas, router and gateway around local.py's one-process server
        from minibuild.cluster import local_stack as backend
    elif target == "slurm":
        from minibuild.cluster import slurm as backend
    else:
        from minibuild.cluster import kube as backend
    return backend


def rollout(cfg: dict[str, Any], target: str = "local", tp: int = 1, dry_run: bool = False,
            delete: bool = False, image: str | None = None, model: str | None = None, replicas: int = 1,
            router: str | None = None, gateway: str | None = None) -> bool:
    """Render, apply, wait until serving (or delete what a rollout made). False on failure, said why."""
    try:
        # --delete needs no image: it selects by label / job name.
        plan = make_plan(cfg, target, tp, image=image if not delete else image or _any_digest(),
                         model=model)
        plan = with_stack(cfg, plan, replicas, router, gateway)
        return _backend(target).rollout(cfg, plan, dry_run, delete)
    except (RolloutError, ConfigError) as exc:
        ui.console().print(f"[red]rollout {target} tp={tp}:[/] {exc}")
        return False


def _any_digest() -> str:
    """A placeholder digest reference for plans that never render an image (--delete)."""
    return "unused@sha256:" + "0" * 64


def plan_for(cfg: dict[str, Any], target: str, tp: int) -> Plan:
    """The plan of an existing rollout (status / logs / verify need names, not an image)."""
    return make_plan(cfg, target, tp, image=_any_digest() if target in KUBE_TARGETS else None)


def status(cfg: dict[str, Any], target: str = "local", tp: int = 1, as_json: bool = False) -> None:
    """What is deployed; `as_json`: a list of {role: replica|router|gateway, url, pid|pod|job, ready}."""
    try:
        backend = _backend(target)
        plan = plan_for(cfg, target, tp)
        if as_json:
            print(json.dumps(backend.entries(cfg, plan), indent=2))
        else:
            backend.status(cfg, plan)
    except (RolloutError, ConfigError) as exc:
        ui.console().print(f"[red]status {target}:[/] {exc}")
        raise SystemExit(1) from exc


def logs(cfg: dict[str, Any], target: str = "local", tp: int = 1, tail: int = 100) -> None:
    try:
        _backend(target).logs(cfg, plan_for(cfg, target, tp), int(tail))
    except (RolloutError, ConfigError) as exc:
        ui.console().print(f"[red]logs {target}:[/] {exc}")
        raise SystemExit(1) from exc
