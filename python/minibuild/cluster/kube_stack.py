"""Kubernetes side of the stack: wait for the router / gateway Deployments, delete everything by the
`mini-vllm/stack` label, list replicas + router + gateway for `invoke status --json`.

The model workload itself is waited for by kube.py (its verdicts explain Kueue, scheduling, pulls,
crash loops); the router and gateway are small CPU Deployments, so "rolled out" (waiter.rollout_progress)
is all they need, with the first pod's problem named when they are not.
"""
from __future__ import annotations

import time
from typing import Any

from minibuild import ui
from minibuild.cluster.kube_api import Kube
from minibuild.cluster.settings import Plan
from minibuild.cluster.stack import gateway_name, router_name
from minibuild.cluster.waiter import Verdict, diagnose_pod, rollout_progress

# Model workloads only (router / gateway Deployments are named mini-vllm-router / -gateway).
MODELS = "app.kubernetes.io/managed-by=mini-vllm,app.kubernetes.io/name=mini-vllm"
# Everything a rollout may create, in delete order; PVCs are kept (the model cache).
STACK_KINDS = ("Deployment", "StatefulSet", "Service", "ConfigMap", "RoleBinding", "Role", "ServiceAccount")


def stack_selector(plan: Plan) -> str:
    return f"mini-vllm/stack={plan.name},app.kubernetes.io/managed-by=mini-vllm"


def parts(plan: Plan) -> list[tuple[str, str]]:
    """(role, Deployment name) of the router and gateway this plan deploys."""
    out = []
    if plan.router:
        out.append(("router", router_name(plan)))
    if plan.gateway:
        out.append(("gateway", gateway_name(plan)))
    return out


def part_verdict(kube: Kube, namespace: str, name: str) -> Verdict:
    dep = kube.get("Deployment", namespace, name)
    if dep is None:
        return Verdict("missing", f"deployment {name} does not exist in {namespace}", done=True)
    progress = rollout_progress(dep)
    if progress.ok:
        return progress
    for pod in kube.list("Pod", namespace, f"app={name}"):
        why = diagnose_pod(pod, [])
        if why is not None:
            return why
    return progress


def wait_parts(kube: Kube, plan: Plan, timeout_s: float, poll_s: float) -> Verdict:
    """Wait until the router and gateway Deployments are rolled out (ready when there are none)."""
    deadline = time.monotonic() + timeout_s
    for role, name in parts(plan):
        last = None
        while True:
            v = part_verdict(kube, plan.namespace, name)
            if v.message != last:
                ui.console().print(f"{role} {name}: {v.state}: {v.message}")
                last = v.message
            if v.done:
                if not v.ok:
                    return v
                break
            if time.monotonic() > deadline:
                return Verdict(v.state, f"gave up after {timeout_s:.0f} s: {v.message}", done=True)
            time.sleep(poll_s)
    return Verdict("ready", f"{plan.name} and its {', '.join(r for r, _ in parts(plan)) or 'no'} front rolled out",
                   done=True, ok=True)


def _ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def entries(kube: Kube, plan: Plan, router_port: int, gateway_port: int) -> list[dict[str, Any]]:
    """[{role, pod, url, ready}] for the model pods, then the router's and the gateway's."""
    out: list[dict[str, Any]] = []
    for role, app, port in (("replica", plan.name, plan.port), ("router", router_name(plan), router_port),
                            ("gateway", gateway_name(plan), gateway_port)):
        for pod in kube.list("Pod", plan.namespace, f"app={app}"):
            ip = (pod.get("status") or {}).get("podIP")
            out.append({"role": role, "pod": pod["metadata"]["name"], "url": f"http://{ip}:{port}" if ip else None,
                        "ready": _ready(pod), "node": (pod.get("spec") or {}).get("nodeName")})
    return out
