"""The Kubernetes targets (hyperpod, eks): apply by server-side apply, wait with diagnosis, delete by label.

`--dry-run` prints the YAML and a diff of the fields we set against what is live; the wait polls the
Deployment, its ReplicaSets, Pods and Events and hands them to the pure waiter (waiter.py), printing
each new verdict - so "queued by Kueue" reads as waiting and a crash loop shows its last log lines.
"""
from __future__ import annotations

import dataclasses
import difflib
import threading
import time
from typing import Any

from rich.table import Table

from minibuild import ui
from minibuild.cluster.kube_api import ApiError, ClusterUnreachable, Kube
from minibuild.cluster.kube_stack import MODELS, STACK_KINDS, stack_selector, wait_parts
from minibuild.cluster.render import to_yaml
from minibuild.cluster.render_stack import render_stack
from minibuild.cluster.settings import MANAGED, Plan, RolloutError
from minibuild.cluster.waiter import Verdict, assess, crashlooping, kueue_gated
from minibuild.config import Config

LOG_LINES = 20
SERVED_ANNOTATION = "mini-vllm/served-model-name"


def project(live: Any, ours: Any) -> Any:
    """The part of a live object that corresponds to the fields we render (server defaults dropped)."""
    if isinstance(ours, dict) and isinstance(live, dict):
        return {k: project(live[k], v) for k, v in ours.items() if k in live}
    if isinstance(ours, list) and isinstance(live, list) and len(ours) == len(live):
        return [project(lv, ov) for lv, ov in zip(live, ours)]
    return live


def diff(live: dict[str, Any] | None, ours: dict[str, Any]) -> str:
    """A unified diff, live -> rendered, over the fields we own ('' when equal)."""
    ident = f"{ours['kind']}/{ours['metadata']['name']}"
    before = to_yaml([project(live, ours)]) if live else ""
    lines = difflib.unified_diff(before.splitlines(True), to_yaml([ours]).splitlines(True),
                                 f"live {ident}" if live else "/dev/null", f"rendered {ident}")
    return "".join(lines)


def _connect() -> Kube:
    kube = Kube()
    kube.ping()
    return kube


def show_dry_run(plan: Plan, objects: list[dict[str, Any]]) -> bool:
    print(to_yaml(objects), end="")
    try:
        kube = _connect()
    except ClusterUnreachable as exc:
        ui.console().print(f"[yellow]no cluster reachable[/] ({exc}); printed the YAML only, no diff")
        return True
    for obj in objects:
        live = kube.get(obj["kind"], plan.namespace, obj["metadata"]["name"])
        d = diff(live, obj)
        ui.console().print(f"{obj['kind']}/{obj['metadata']['name']}: " + ("new" if live is None else
                                                                     "changes" if d else "unchanged"))
        if d:
            print(d, end="")
    return True


def delete_all(kube: Kube, plan: Plan) -> bool:
    """Delete what the rollout made in its namespace by label: autoscaler, monitors, model workload,
    Service, router + RBAC, gateway. Kept: an EKS model-cache PVC (it is the cache), the GPU NodePool and
    the adapter's ConfigMap (shared; only the gateway's ConfigMap is deleted)."""
    gone = []
    for kind in ("ScaledObject", "HorizontalPodAutoscaler", "PodMonitor", "ServiceMonitor", *STACK_KINDS):
        selectors = ([f"{stack_selector(plan)},app.kubernetes.io/component=gateway"] if kind == "ConfigMap"
                     else [plan.selector, stack_selector(plan)])
        try:
            found = {o["metadata"]["name"] for sel in selectors for o in kube.list(kind, plan.namespace, sel)}
        except ApiError as exc:
            if exc.status == 404 and kind in PROVIDERS:   # that CRD is not installed: nothing of it to delete
                continue
            raise
        for name in sorted(found):
            kube.delete(kind, plan.namespace, name)
            gone.append(f"{kind}/{name}")
    ui.console().print(f"deleted {', '.join(gone)}" if gone else f"nothing labelled {plan.selector} in {plan.namespace}")
    return True


def observe(kube: Kube, plan: Plan) -> Verdict:
    """Read the rollout's objects once and judge them."""
    dep = kube.get("Deployment", plan.namespace, plan.name) or kube.get("StatefulSet", plan.namespace, plan.name)
    if dep is None:   # (a StatefulSet: EKS replicas with a cache each; its status reads the same here)
        return Verdict("missing", f"deployment {plan.name} does not exist in {plan.namespace}", done=True)
    pods = kube.list("Pod", plan.namespace, f"app={plan.name}")
    rsets = kube.list("ReplicaSet", plan.namespace, f"app={plan.name}")
    names = {p["metadata"]["name"] for p in pods}
    events = [e for e in kube.list("Event", plan.namespace, fields="involvedObject.kind=Pod") if (e.get("involvedObject") or {}).get("name") in names]
    logs = {}
    for pod in crashlooping(pods):
        logs[pod] = (kube.pod_logs(plan.namespace, pod, LOG_LINES, previous=True)
                     or kube.pod_logs(plan.namespace, pod, LOG_LINES))
    return assess(dep, rsets, pods, events, logs)


def wait(kube: Kube, plan: Plan, timeout_s: float, poll_s: float) -> Verdict:
    """Poll until the verdict is final or time runs out; print each change of verdict."""
    deadline = time.monotonic() + timeout_s
    last = None
    with ui.console().status(f"waiting for deployment {plan.name}") as spinner:
        while True:
            verdict = observe(kube, plan)
            if verdict.message != last:
                colour = {"queued": "yellow", "unschedulable": "yellow", "ready": "green"}.get(verdict.state, "cyan")
                ui.console().print(f"[{colour}]{verdict.state}[/]: {verdict.message}")
                last = verdict.message
            spinner.update(f"{plan.name}: {verdict.state}")
            if verdict.done:
                return verdict
            if time.monotonic() > deadline:
                return Verdict(verdict.state, f"gave up after {timeout_s:.0f} s: {verdict.message}", done=True,
                               pod=verdict.pod, logs=verdict.logs)
            time.sleep(poll_s)


# custom resources: who serves them, and whether a rollout may go on without them
PROVIDERS = {"PodMonitor": ("kube-prometheus-stack", True), "ServiceMonitor": ("kube-prometheus-stack", True),
             "ScaledObject": ("KEDA", False), "NodePool": ("Karpenter", False), "EC2NodeClass": ("Karpenter", False)}


def apply_one(kube: Kube, obj: dict[str, Any], manager: str) -> dict[str, Any] | None:
    """Apply one object; a monitor whose CRD the cluster lacks is skipped with a warning (None)."""
    try:
        return kube.apply(obj, manager)
    except ApiError as exc:
        provider, optional = PROVIDERS.get(obj["kind"], (None, False))
        if exc.status != 404 or provider is None:
            raise
        what = f"the cluster does not serve {obj['apiVersion']} {obj['kind']} (is {provider} installed?)"
        if not optional:
            raise RolloutError(f"{obj['kind']}/{obj['metadata']['name']}: {what}") from exc
        ui.warn(f"{obj['kind']}/{obj['metadata']['name']} not applied: {what}; the pods still carry "
                "prometheus.io/scrape annotations, or set cluster.monitoring.monitor: none")
        return None


def rollout(cfg: Config, plan: Plan, dry_run: bool, delete: bool) -> bool:
    objects = render_stack(cfg, plan)
    if dry_run:
        return show_dry_run(plan, objects)
    try:
        kube = _connect()
        if delete:
            return delete_all(kube, plan)
        manager = cfg.cluster.field_manager
        for obj in objects:
            out = apply_one(kube, obj, manager)
            if out is None:
                continue
            gen = (out.get("metadata") or {}).get("generation", "-")
            where = obj["metadata"].get("namespace") or "the cluster"
            ui.console().print(f"applied {obj['kind']}/{obj['metadata']['name']} in {where} (generation {gen})")
        verdict = wait(kube, plan, float(plan.settings.get("wait_timeout_s") or cfg.cluster.wait_timeout_s),
                       float(plan.settings.get("poll_s", 5)))
        if verdict.ok:
            verdict = wait_parts(kube, plan, float(plan.settings.get("wait_timeout_s") or cfg.cluster.wait_timeout_s),
                                 float(plan.settings.get("poll_s", 5)))
    except (ClusterUnreachable, ApiError) as exc:
        raise RolloutError(str(exc)) from exc
    if verdict.ok:
        ui.console().print(f"[green]serving[/] {plan.served_name}: `invoke verify --target {plan.target} "
                           f"--served-model-name {plan.served_name}`")
        return True
    ui.console().print(f"[red]rollout failed ({verdict.state}):[/] {verdict.message}")
    if verdict.logs:
        ui.console().print(f"--- last log lines of {verdict.pod} ---")
        for line in verdict.logs:
            ui.console().print(line, markup=False, highlight=False)
    return False


def deployed(cfg: Config, plan: Plan) -> list[str]:
    """Served names of the Deployments rollout made in the plan's namespace."""
    try:
        deps = [d for kind in ("Deployment", "StatefulSet") for d in _connect().list(kind, plan.namespace, MODELS)]
    except (ClusterUnreachable, ApiError) as exc:
        raise RolloutError(str(exc)) from exc
    return sorted(((d["metadata"].get("annotations") or {}).get(SERVED_ANNOTATION) or d["metadata"]["name"])
                  for d in deps)


def status(cfg: Config, plan: Plan, only: bool = False) -> None:
    """Each Deployment rollout made (or only the plan's): its verdict and its pods."""
    try:
        kube = _connect()
        names = [plan.name] if only else sorted(d["metadata"]["name"] for kind in ("Deployment", "StatefulSet")
                                                for d in kube.list(kind, plan.namespace, MODELS))
        if not names:
            ui.console().print(f"{plan.target} {plan.namespace}: nothing deployed (no Deployment labelled {MANAGED})")
        for name in names:
            one = dataclasses.replace(plan, name=name)
            _status_one(one, observe(kube, one), kube.list("Pod", plan.namespace, f"app={name}"))
    except (ClusterUnreachable, ApiError) as exc:
        raise RolloutError(str(exc)) from exc


def _status_one(plan: Plan, verdict: Verdict, pods: list[dict[str, Any]]) -> None:
    ui.console().print(f"{plan.target} {plan.namespace}/{plan.name}: [bold]{verdict.state}[/] - {verdict.message}")
    table = Table(title=f"pods of {plan.name}")
    for col in ("pod", "phase", "ready", "restarts", "node"):
        table.add_column(col)
    for p in pods:
        cs = (p.get("status") or {}).get("containerStatuses") or [{}]
        phase = (p.get("status") or {}).get("phase", "?") + (" (queued by Kueue)" if kueue_gated(p) else "")
        table.add_row(p["metadata"]["name"], phase,
                      str(cs[0].get("ready", False)), str(cs[0].get("restartCount", 0)),
                      (p.get("spec") or {}).get("nodeName", "-"))
    ui.table_console().print(table)


def logs(cfg: Config, plan: Plan, lines: int, follow: bool = False) -> None:
    """Each pod's server log (kubectl logs); with follow, streamed until the containers stop."""
    try:
        kube = _connect()
        pods = [p["metadata"]["name"] for p in kube.list("Pod", plan.namespace, f"app={plan.name}")]
        if not pods:
            raise RolloutError(f"no pods of {plan.name} in {plan.namespace}")
        if not follow:
            for pod in pods:
                print(f"==> {pod} <==")
                for line in kube.pod_logs(plan.namespace, pod, lines):
                    print(line)
            return
        _follow(kube, plan.namespace, pods, lines)
    except (ClusterUnreachable, ApiError) as exc:
        raise RolloutError(str(exc)) from exc


def _follow(kube: Kube, namespace: str, pods: list[str], lines: int) -> None:
    """One stream per pod (lines prefixed with the pod's name when there are several)."""
    lock = threading.Lock()
    errors: list[BaseException] = []

    def pump(pod: str) -> None:
        try:
            for line in kube.follow_logs(namespace, pod, lines):
                with lock:
                    print(f"[{pod}] {line}" if len(pods) > 1 else line, flush=True)
        except (ClusterUnreachable, ApiError) as exc:
            errors.append(exc)

    threads = [threading.Thread(target=pump, args=(pod,), daemon=True) for pod in pods]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)
    if errors:
        raise errors[0]


def entries(cfg: Config, plan: Plan) -> list[dict[str, Any]]:
    """status --json: model pods, router and gateway pods with their readiness."""
    from minibuild.cluster import kube_stack

    try:
        return kube_stack.entries(_connect(), plan, cfg.cluster.stack.router.port, cfg.cluster.stack.gateway.port)
    except (ClusterUnreachable, ApiError) as exc:
        raise RolloutError(str(exc)) from exc
