"""How Prometheus finds the servers (and the router): monitors and annotations on Kubernetes, a scrape
config on local and Slurm.

Kubernetes: a PodMonitor (or ServiceMonitor) per component for the Prometheus operator of
kube-prometheus-stack, plus `prometheus.io/scrape|port|path` pod annotations for Prometheus set ups
that discover pods by annotation instead. Local / Slurm: `build/rollout/<target>/prometheus.yml`
whose file_sd target files are rewritten from the rollout state after every rollout and --delete,
so a Prometheus started once keeps following. Every target gets `app=<deployment name>` and an
`instance` that names the replica, which is what the dashboard's per-replica panels and the
autoscaling query select on.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from minibuild.cluster.templates import fill, template_dir
from minibuild.cluster.settings import Plan, make_plan, state_dir
from minibuild.config import Config, MonitoringConfig


@dataclass(frozen=True)
class Component:
    """Something Prometheus scrapes: its pods' labels, the container port name, the metrics path."""
    name: str
    match_labels: dict[str, str]
    port_name: str
    path: str


def pod_annotations(port: int, path: str) -> dict[str, str]:
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": path}


def render_monitors(cluster_dir: Path, plan: Plan, mon: MonitoringConfig, components: list[Component]) -> list[dict[str, Any]]:
    """One PodMonitor / ServiceMonitor per component ([] with monitor: none)."""
    if mon.monitor == "none":
        return []
    template = yaml.safe_load((cluster_dir / f"k8s/{mon.monitor}.yaml").read_text())
    return [fill(template, {"name": c.name, "namespace": plan.namespace, "match_labels": c.match_labels,
                            "labels": {**plan.labels, **mon.labels, "app": c.name}, "port_name": c.port_name,
                            "path": c.path, "interval": mon.scrape_interval})
            for c in components]


# --- local and Slurm -----------------------------------------------------------------------------

def scrape_targets(cfg: Config, target: str, backend: Any) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(servers, routers) that run now, as [{name, app, url}], from what `invoke status --json` reports
    (the backend's entries: replicas and router of every deployed model)."""
    servers: list[dict[str, str]] = []
    routers: list[dict[str, str]] = []
    for served in backend.deployed(cfg, make_plan(cfg, target)):
        plan = make_plan(cfg, target, served_name=served)
        if hasattr(backend, "entries"):
            parts = backend.entries(cfg, plan)
        else:   # a backend without replicas: its one recorded server, once it has an address
            state = backend.read_state(cfg, plan) or {}
            parts = [{"role": "replica", "name": plan.name, "url": state["url"]}] if state.get("url") else []
        for e in parts:
            if not e.get("url"):          # not running (yet): nothing to scrape
                continue
            if e["role"] == "replica":
                servers.append({"name": e["name"], "app": plan.name, "url": e["url"]})
            elif e["role"] == "router" and e.get("metrics_url"):
                routers.append({"name": e["name"], "app": e["name"], "url": e["metrics_url"]})
    return servers, routers


def file_sd(parts: list[dict[str, str]], target: str, default_path: str) -> list[dict[str, Any]]:
    """Prometheus file_sd entries: one per process, labelled app=DEPLOYMENT, instance=NAME@host:port."""
    entries = []
    for p in parts:
        u = urlsplit(p["url"])
        labels = {"app": p["app"], "instance": f"{p['name']}@{u.netloc}", "mini_vllm_target": target,
                  "__metrics_path__": u.path if u.path not in ("", "/") else default_path}
        entries.append({"targets": [u.netloc], "labels": labels})
    return entries


def write_scrape_config(cfg: Config, target: str, backend: Any) -> Path:
    """(Re)write <state dir>/<target>/prometheus/prometheus.yml and its target files; returns prometheus.yml."""
    mon = cfg.cluster.monitoring
    d = state_dir(cfg, target) / "prometheus"
    d.mkdir(exist_ok=True)
    servers, routers = scrape_targets(cfg, target, backend)
    servers_file, routers_file = d / "servers.json", d / "routers.json"
    _atomic(servers_file, json.dumps(file_sd(servers, target, mon.path), indent=1))
    _atomic(routers_file, json.dumps(file_sd(routers, target, "/metrics"), indent=1))
    doc = fill(yaml.safe_load((template_dir(cfg) / "prometheus/prometheus.yml").read_text()), {
        "scrape_interval": mon.scrape_interval, "evaluation_interval": mon.evaluation_interval, "path": mon.path,
        "servers_file": str(servers_file), "routers_file": str(routers_file)})
    config = d / "prometheus.yml"
    _atomic(config, "# written by `invoke rollout` from cluster/prometheus/prometheus.yml\n"
            + yaml.safe_dump(doc, sort_keys=False))
    return config


def _atomic(path: Path, text: str) -> None:
    """Prometheus re-reads file_sd files on change: never let it see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
