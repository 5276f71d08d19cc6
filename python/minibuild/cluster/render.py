"""Render a Plan into what a target runs: Kubernetes objects (from cluster/k8s/) or a Slurm script.

Templates are data under cluster/; this module only fills placeholders and merges the target's
overlay, so reviewing a deployment means reading YAML, not code. Output is deterministic (same plan
-> same bytes), which keeps `--dry-run` diffs quiet when nothing changed.
"""
from __future__ import annotations

import re
import shlex
import string
from pathlib import Path
from typing import Any

import yaml

from minibuild.cluster.addons import add_ons   # monitors, autoscaler, GPU NodePool (docs/observability.md)
from minibuild.cluster.settings import Plan
from minibuild.cluster.templates import fill, merge, template_dir
from minibuild.config import Config

# A model the server fetches itself (mini_vllm/model_sources): s3://bucket/prefix or a Hugging Face id org/name.
_FETCHED = re.compile(r"s3://.+|[A-Za-z0-9][\w.-]*/[\w.-]+")


def server_args(plan: Plan, host: str = "0.0.0.0") -> list[str]:
    """The `mini-vllm serve` arguments every target runs. A Hugging Face id or s3:// model on a target with a
    writable model volume (EKS's cache claim) is downloaded into that volume, so a restarted pod starts
    from what the first one fetched."""
    vol = plan.settings.get("model_volume") or {}
    fetch = (["--download-dir", str(vol["mount"])]
             if _FETCHED.fullmatch(plan.model_path) and vol.get("mount") and not vol.get("read_only", True) else [])
    return ["serve", plan.model_path, "--host", host, "--port", str(plan.port),
            "--tensor-parallel-size", str(plan.tp), "--served-model-name", plan.served_name, *fetch,
            *[str(a) for a in plan.settings.get("server_args") or []]]   # cluster.targets.<target>.server_args


def _env(cfg: Config, plan: Plan) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": k, "value": str(v)} for k, v in sorted((cfg.cluster.env).items())]
    env.append({"name": "MINI_VLLM_TP", "value": str(plan.tp)})
    for ref in (cfg.cluster.secrets).values():
        env.append({"name": ref.env, "valueFrom": {"secretKeyRef": {
            "name": ref.name, "key": ref.key, "optional": True}}})
    return env


def _volumes(plan: Plan) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    vol = plan.settings.get("model_volume") or {}
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if vol.get("pvc"):
        ro = bool(vol.get("read_only", True))
        claim: dict[str, Any] = {"claimName": vol["pvc"]}
        if ro:
            claim["readOnly"] = True
        volumes.append({"name": "model", "persistentVolumeClaim": claim})
        mounts.append({"name": "model", "mountPath": vol["mount"], "readOnly": ro})
    if plan.tp > 1:   # NCCL / gloo between TP ranks use /dev/shm; the default 64 MiB is far too small
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": plan.variant["shm"]}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    volumes.append({"name": "tmp", "emptyDir": {}})   # non-root: a writable scratch dir
    mounts.append({"name": "tmp", "mountPath": "/tmp"})
    return volumes, mounts


def _load(cfg: Config, rel: str) -> Any:
    return yaml.safe_load((template_dir(cfg) / rel).read_text())


def render_kubernetes(cfg: Config, plan: Plan) -> list[dict[str, Any]]:
    """The objects for hyperpod / eks, in apply order ([NodePool, EC2NodeClass], PVC, Service, Deployment,
    monitors, autoscaler)."""
    s = plan.settings
    labels = dict(plan.labels)
    service_labels = dict(plan.labels)
    if plan.target == "hyperpod":
        labels["kueue.x-k8s.io/queue-name"] = str(cfg.cluster.targets["hyperpod"]["queue"])
        if s.get("priority_class"):
            labels["kueue.x-k8s.io/priority-class"] = s["priority_class"]
    node_selector = dict(s.get("node_selector") or {})
    if s.get("instance_type"):
        node_selector["node.kubernetes.io/instance-type"] = s["instance_type"]
    volumes, mounts = _volumes(plan)
    probes = cfg.cluster.probes
    vol = s.get("model_volume") or {}
    values: dict[str, Any] = {
        "name": plan.name, "namespace": plan.namespace, "labels": labels, "service_labels": service_labels,
        "pvc_labels": {k: v for k, v in plan.labels.items() if k.startswith("app.kubernetes.io/")},
        "image": plan.image, "image_source": plan.image_source, "served_name": plan.served_name,
        "port": plan.port, "tp": plan.tp,
        "cpu": str(plan.variant["cpu"]), "memory": str(plan.variant["memory"]),
        "command": ["mini-vllm", *server_args(plan)], "env": _env(cfg, plan),
        "node_selector": node_selector or None, "tolerations": s.get("tolerations") or None,
        "volumes": volumes, "volume_mounts": mounts,
        "progress_deadline_s": cfg.cluster.progress_deadline_s, "replicas": plan.replicas,
        "strategy": {"type": "Recreate"} if plan.replicas == 1 else
        {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
        "pvc_name": vol.get("pvc"), "pvc_size": vol.get("size"), "storage_class": vol.get("storage_class"),
        **{k: int(v) for k, v in probes.items()},
    }
    deployment = merge(fill(_load(cfg, "k8s/deployment.yaml"), values), _load(cfg, f"k8s/{plan.target}.yaml") or {})

    before, after = add_ons(cfg, plan, deployment)
    objects = list(before)
    if vol.get("create"):
        objects.append(fill(_load(cfg, "k8s/pvc.yaml"), values))
    objects.append(fill(_load(cfg, "k8s/service.yaml"), values))
    objects.append(deployment)
    return objects + after


def to_yaml(objects: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False)


# sbatch flags a deployment's settings may set (cluster.targets.slurm, cluster.models.<name>.slurm)
SBATCH_OPTIONS = {"partition": "--partition", "account": "--account", "qos": "--qos", "time_limit": "--time",
                  "memory": "--mem", "constraint": "--constraint"}


def sbatch_options(settings: dict[str, Any]) -> str:
    """`#SBATCH` lines for the optional per-deployment resources that are set."""
    return "\n".join(f"#SBATCH {flag}={settings[key]}" for key, flag in SBATCH_OPTIONS.items()
                     if settings.get(key) not in (None, ""))


def render_slurm(cfg: Config, plan: Plan, output: Path, launch: str, runtime: str,
                 kind: str = "serve", extra_env: dict[str, str] | None = None,
                 values: dict[str, Any] | None = None) -> str:
    """A job script (cluster/slurm/KIND.sbatch) that runs `launch` (the runtime's command line)."""
    s = plan.settings
    env = {**(cfg.cluster.env), "MINI_VLLM_TP": plan.tp, **(extra_env or {})}
    text = (template_dir(cfg) / f"slurm/{kind}.sbatch").read_text()
    return string.Template(text).substitute(
        job_name=plan.name if kind == "serve" else f"{plan.name}-{kind}", comment=f"mini-vllm:{kind}:{plan.served_name}",
        tp=plan.tp, cpus=max(1, int(s.get("cpus_per_gpu", 1)) * plan.tp), output=str(output),
        sbatch_options=sbatch_options(s),
        env_lines="\n".join(f"export {k}={shlex.quote(str(v))}" for k, v in sorted(env.items())),
        model=shlex.quote(plan.model_path), port=plan.port, served_name=shlex.quote(plan.served_name),
        launch=launch, runtime=runtime, **(values or {}))
