"""`invoke rollout / status / logs`: deploy the server to HyperPod (Kueue), EKS (Karpenter), Slurm or
local processes, wait until it serves, and explain failures.

This module only dispatches on the target; each target lives in its own module, and all of them
start from the same `Plan` (settings.py) so names, labels and ports agree. A deployment is named
for its served model, so several models live side by side on every target.
"""
from __future__ import annotations

import dataclasses
import json

from minibuild import ui
from minibuild.cluster.settings import KUBE_TARGETS, Plan, RolloutError, choose_port, make_plan, reserved_ports
from minibuild.cluster.stack import with_stack
from minibuild.config import Config, ConfigError


def _backend(target: str):
    if target == "local":   # replicas, router and gateway around local.py's one-process server
        from minibuild.cluster import local_stack as backend
    elif target == "slurm":   # replica jobs (slurm.py) + a router job
        from minibuild.cluster import slurm_stack as backend
    else:
        from minibuild.cluster import kube as backend
    return backend


def rollout(cfg: Config, target: str = "local", tp: int = 1, dry_run: bool = False,
            delete: bool = False, image: str | None = None, model: str | None = None,
            served_name: str | None = None, replicas: int = 1, router: str | None = None,
            gateway: str | None = None, autoscale: str | None = None) -> bool:
    """Render, apply, wait until serving (or delete what a rollout made). False on failure, said why."""
    try:
        if delete:   # --delete needs no image: it selects by label / job name
            ok = _backend(target).rollout(cfg, plan_for(cfg, target, served_name, model, tp), dry_run, True)
        else:
            plan = make_plan(cfg, target, tp, image=image, model=model, served_name=served_name, autoscale=autoscale)
            plan = with_stack(cfg, plan, replicas, router, gateway)
            if target not in KUBE_TARGETS:
                plan = dataclasses.replace(plan, port=_port(cfg, target, plan, dry_run))
            ok = _backend(target).rollout(cfg, plan, dry_run, False)
        if target not in KUBE_TARGETS and not dry_run:
            _scrape_config(cfg, target)
        return ok
    except (RolloutError, ConfigError) as exc:
        ui.console().print(f"[red]rollout {target}:[/] {exc}")
        return False


def _scrape_config(cfg: Config, target: str) -> None:
    """Local / Slurm: rewrite the Prometheus scrape config for what runs now (docs/observability.md)."""
    from minibuild.cluster.monitoring import write_scrape_config

    path = write_scrape_config(cfg, target, _backend(target))
    ui.console().print(f"Prometheus: prometheus --config.file={path}", highlight=False)


def _port(cfg: Config, target: str, plan: Plan, dry_run: bool) -> int:
    """The port of a local / Slurm deployment: not one another live deployment holds (settings.choose_port)."""
    try:
        own, taken = _backend(target).ports(cfg, plan)
    except RolloutError as exc:
        if not dry_run:
            raise
        ui.console().print(f"[yellow]cannot see what runs[/] ({str(exc).splitlines()[0]}); "
                           "the port shown ignores other deployments")
        own, taken = None, {}
    return choose_port(plan, own, taken, reserved_ports(cfg, plan.served_name))


def _any_digest() -> str:
    """A placeholder digest reference for plans that never render an image (--delete, status, logs)."""
    return "unused@sha256:" + "0" * 64


def plan_for(cfg: Config, target: str, served_name: str | None = None, model: str | None = None,
             tp: int = 1) -> Plan:
    """The plan of an existing deployment (status / logs / verify / --delete need names, not an image):
    the one named, else - when exactly one is deployed - that one, else the target's default model's."""
    image = _any_digest() if target in KUBE_TARGETS else None
    if served_name or model:
        return make_plan(cfg, target, tp, image=image, model=model, served_name=served_name)
    default = make_plan(cfg, target, tp, image=image)
    names = _backend(target).deployed(cfg, default)
    if len(names) == 1 and names[0] != default.served_name:
        return make_plan(cfg, target, tp, image=image, served_name=names[0])
    return default


def status(cfg: Config, target: str = "local", served_name: str | None = None, as_json: bool = False) -> None:
    """Every deployment of the target (or the one named), and why each is or is not serving;
    `as_json`: one deployment's parts as [{role: replica|router|gateway, url, pid|pod|job, ready}]."""
    try:
        backend = _backend(target)
        if as_json:
            print(json.dumps(backend.entries(cfg, plan_for(cfg, target, served_name)), indent=2))
            return
        image = _any_digest() if target in KUBE_TARGETS else None
        backend.status(cfg, make_plan(cfg, target, image=image, served_name=served_name), served_name is not None)
    except (RolloutError, ConfigError) as exc:
        ui.console().print(f"[red]status {target}:[/] {exc}")
        raise SystemExit(1) from exc


def logs(cfg: Config, target: str = "local", served_name: str | None = None, tail: int = 100,
         follow: bool = False) -> None:
    try:
        _backend(target).logs(cfg, plan_for(cfg, target, served_name), int(tail), follow)
    except (RolloutError, ConfigError) as exc:
        ui.console().print(f"[red]logs {target}:[/] {exc}")
        raise SystemExit(1) from exc
    except KeyboardInterrupt:
        pass
