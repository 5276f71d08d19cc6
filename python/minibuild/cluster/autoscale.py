"""`--autoscale keda|hpa`: scale the server Deployment on its queue, vllm:num_requests_waiting.

Why the queue: a server whose batch is full queues requests, and queued requests are what a new
replica would take over; GPU utilisation stays near 100% whether or not users wait. Both paths
compute the same thing - desired replicas = ceil(total waiting / waiting_per_replica), clamped to
[min, max]: KEDA from a PromQL query it runs itself, the HPA from the per-pod custom metric that
prometheus-adapter serves (its rule is rendered as a ConfigMap). Both get the same HPA behaviour:
at most one replica added per scale_up_period_s (a new replica spends minutes loading the model
while the queue still looks long) and a scale-down stabilization window of scale_down_window_s.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from minibuild.cluster.templates import fill
from minibuild.cluster.settings import Plan, RolloutError
from minibuild.config import AutoscaleConfig

MODES = ("keda", "hpa")


def selector(app: str, namespace: str | None) -> str:
    """PromQL label matchers of one deployment's servers (namespace only where Kubernetes sets one)."""
    return (f'namespace="{namespace}",' if namespace else "") + f'app="{app}"'


def query(metric: str, app: str, namespace: str | None) -> str:
    """The KEDA trigger's query: all requests waiting in this deployment's servers."""
    return f"sum({metric}{{{selector(app, namespace)}}})"


def desired_replicas(total_waiting: float, per_replica: float, lo: int, hi: int) -> int:
    """What KEDA's and the HPA's AverageValue target arrive at for a total (no stabilization)."""
    return max(lo, min(hi, math.ceil(total_waiting / per_replica) if total_waiting > 0 else lo))


def behavior(a: AutoscaleConfig) -> dict[str, Any]:
    return {"scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max",
                        "policies": [{"type": "Pods", "value": 1, "periodSeconds": a.scale_up_period_s}]},
            "scaleDown": {"stabilizationWindowSeconds": a.scale_down_window_s, "selectPolicy": "Max",
                          "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}}


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def adapter_metric(metric: str) -> str:
    """The custom-metrics API name prometheus-adapter gives the series (':' is not allowed there)."""
    return metric.replace(":", "_")


def adapter_rules(metric: str) -> str:
    rule = {"seriesQuery": f'{metric}{{namespace!="",pod!=""}}',
            "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
            "name": {"matches": f"^{metric}$", "as": adapter_metric(metric)},
            "metricsQuery": "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)"}
    return yaml.safe_dump({"rules": [rule]}, sort_keys=False)


def render(cluster_dir: Path, plan: Plan, mode: str, a: AutoscaleConfig, startup_window_s: int) -> list[dict[str, Any]]:
    """The autoscaler objects for a Kubernetes plan: a ScaledObject, or an HPA + the adapter ConfigMap."""
    if mode not in MODES:
        raise RolloutError(f"--autoscale {mode!r}: choose keda or hpa")
    values = {"name": plan.name, "namespace": plan.namespace, "labels": dict(plan.labels),
              "min_replicas": a.min_replicas, "max_replicas": a.max_replicas, "behavior": behavior(a),
              "threshold": _num(a.waiting_per_replica)}
    load = lambda rel: yaml.safe_load((cluster_dir / rel).read_text())  # noqa: E731
    if mode == "keda":
        values.update(polling_interval_s=a.polling_interval_s, scale_down_window_s=a.scale_down_window_s,
                      startup_window_s=int(startup_window_s), prometheus_url=a.prometheus_url,
                      query=query(a.metric, plan.name, plan.namespace))
        return [fill(load("k8s/scaledobject.yaml"), values)]
    values.update(adapter_metric=adapter_metric(a.metric), adapter_config=adapter_rules(a.metric),
                  adapter_name=a.adapter_name, adapter_namespace=a.adapter_namespace)
    return [fill(load("k8s/prometheus-adapter.yaml"), values), fill(load("k8s/hpa.yaml"), values)]
