"""What a Kubernetes rollout adds around the server: Prometheus scraping, the autoscaler, GPU nodes.

One entry point for render_kubernetes, so the base objects (cluster/k8s/deployment.yaml and friends)
stay readable on their own: `before` objects are applied first (the eks GPU NodePool, so nodes can
come up for the pod), `after` objects last (monitors and autoscalers reference the Deployment).
"""
from __future__ import annotations

from typing import Any

from minibuild.cluster import autoscale, karpenter
from minibuild.cluster.monitoring import Component, pod_annotations, render_monitors
from minibuild.cluster.templates import template_dir
from minibuild.cluster.settings import Plan
from minibuild.cluster.stack import router_name
from minibuild.config import Config

Objects = list[dict[str, Any]]


def components(plan: Plan, path: str) -> list[Component]:
    """What Prometheus scrapes: the model pods, and the vllm-router pods (port `metrics`) when there is one."""
    out = [Component(name=plan.name, match_labels={"app": plan.name}, port_name="http", path=path)]
    if plan.router:
        name = router_name(plan)
        out.append(Component(name=name, match_labels={"app": name}, port_name="metrics", path="/metrics"))
    return out


def startup_window_s(cfg: Config) -> int:
    """How long a pod may take to load the model (the startup probe's budget)."""
    return int(cfg.cluster.probes["startup_period_s"]) * int(cfg.cluster.probes["startup_failure_threshold"])


def add_ons(cfg: Config, plan: Plan, deployment: dict[str, Any]) -> tuple[Objects, Objects]:
    """(before, after) objects for a hyperpod / eks plan; annotates `deployment` for Prometheus in place."""
    mon = cfg.cluster.monitoring
    pod_meta = deployment["spec"]["template"].setdefault("metadata", {})
    pod_meta["annotations"] = {**(pod_meta.get("annotations") or {}), **pod_annotations(plan.port, mon.path)}
    before = (karpenter.render(template_dir(cfg), plan, plan.settings.get("karpenter") or {})
              if plan.target == "eks" else [])
    after = render_monitors(template_dir(cfg), plan, mon, components(plan, mon.path))
    if plan.autoscale:
        deployment["spec"].pop("replicas", None)   # the autoscaler owns it; applying a count would fight it
        after += autoscale.render(template_dir(cfg), plan, plan.autoscale, cfg.cluster.autoscale,
                                  startup_window_s(cfg))
    return before, after
