"""Render the whole Kubernetes stack: model replicas (+ their storage), vllm-router with its RBAC, and
the LiteLLM gateway - from cluster/k8s/{router,gateway}.yaml and render.py's model objects.

Storage for N model pods: HyperPod's S3 Mountpoint claim is shared by nature; on EKS one
ReadWriteOnce EBS cache cannot serve pods on N nodes, so `model_volume.replicas_mode` chooses a
StatefulSet whose volumeClaimTemplates give each pod its own cache (per_pod) or one ReadWriteMany
claim of `shared_storage_class` (shared). The router and gateway images are pinned by digest like the
server's: build/images/{router,gateway}.json, or $MINI_VLLM_IMAGE_ROUTER / $MINI_VLLM_IMAGE_GATEWAY (config).
"""
from __future__ import annotations

import copy
import hashlib
from typing import Any

import yaml

from minibuild.cluster.render import render_kubernetes
from minibuild.cluster.templates import fill, template_dir
from minibuild.cluster.settings import Plan, RolloutError, image_reference
from minibuild.cluster.stack import gateway_config, gateway_name, router_args, router_name
from minibuild.config import Config

Obj = dict[str, Any]


def _load_all(cfg: Config, rel: str) -> list[Obj]:
    return [d for d in yaml.safe_load_all((template_dir(cfg) / rel).read_text()) if d]


def stack_image(cfg: Config, part: str) -> tuple[str, str]:
    """(REPO@sha256:..., source) of the router / gateway image stage."""
    settings = getattr(cfg.cluster.stack, part)
    ref, source = image_reference(cfg, settings.image, settings.image_stage)
    return ref, (f"$MINI_VLLM_IMAGE_{part.upper()}" if source == "--image" else source)


def part_labels(plan: Plan, name: str, component: str) -> dict[str, str]:
    return {"app": name, "app.kubernetes.io/name": f"mini-vllm-{component}",
            "app.kubernetes.io/component": component, "app.kubernetes.io/managed-by": "mini-vllm",
            "mini-vllm/stack": plan.name}


def _per_pod_statefulset(plan: Plan, dep: Obj, vol: dict[str, Any]) -> Obj:
    """The Deployment as a StatefulSet whose volumeClaimTemplates give every pod its own model cache."""
    spec = dep["spec"]
    template = copy.deepcopy(spec["template"])
    template["spec"]["volumes"] = [v for v in template["spec"]["volumes"] if v["name"] != "model"]
    sts = {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": copy.deepcopy(dep["metadata"]),
           "spec": {"serviceName": plan.name, "replicas": plan.replicas, "podManagementPolicy": "Parallel",
                    "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
                    "revisionHistoryLimit": spec.get("revisionHistoryLimit", 3),
                    "selector": copy.deepcopy(spec["selector"]), "template": template,
                    "volumeClaimTemplates": [{
                        "metadata": {"name": "model", "labels": {"mini-vllm/stack": plan.name}},
                        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": vol["storage_class"],
                                 "resources": {"requests": {"storage": vol["size"]}}}}]}}
    if "replicas" not in spec:     # an autoscaler owns the count (addons.py)
        del sts["spec"]["replicas"]
    return sts


def model_objects(cfg: Config, plan: Plan) -> list[Obj]:
    objects = render_kubernetes(cfg, plan)
    vol = plan.settings.get("model_volume") or {}
    if (plan.replicas == 1 and not plan.autoscale) or not vol.get("create"):
        return objects          # one pod for good, or a claim that is shared already (HyperPod's S3 PVC)
    mode = vol.get("replicas_mode", "per_pod")
    if mode == "shared":
        for obj in objects:
            if obj["kind"] == "PersistentVolumeClaim":
                obj["spec"]["accessModes"] = ["ReadWriteMany"]
                obj["spec"]["storageClassName"] = vol["shared_storage_class"]
                obj["metadata"]["name"] = f"{vol['pvc']}-shared"
        for obj in objects:
            for v in obj["spec"].get("template", {}).get("spec", {}).get("volumes", []):
                if v["name"] == "model":
                    v["persistentVolumeClaim"]["claimName"] = f"{vol['pvc']}-shared"
        return objects
    if mode != "per_pod":
        raise RolloutError(f"cluster.targets.{plan.target}.model_volume.replicas_mode {mode!r}: per_pod or shared")
    sts = _per_pod_statefulset(plan, next(o for o in objects if o["kind"] == "Deployment"), vol)
    out = []
    for o in objects:
        if o["kind"] == "Deployment":
            out.append(sts)
        elif o["kind"] != "PersistentVolumeClaim":
            ref = (o.get("spec") or {}).get("scaleTargetRef")
            if ref and ref.get("name") == plan.name:   # the autoscaler scales the StatefulSet now
                ref["kind"] = "StatefulSet"
            out.append(o)
    return out


def router_objects(cfg: Config, plan: Plan) -> list[Obj]:
    rs = cfg.cluster.stack.router
    image, source = stack_image(cfg, "router")
    name = router_name(plan)
    args = router_args(cfg, plan.router, "0.0.0.0", rs.port, "0.0.0.0", rs.metrics_port,
                       discovery={"selector": {"app": plan.name}, "port": plan.port, "namespace": plan.namespace})
    values = {"router_name": name, "namespace": plan.namespace, "router_labels": part_labels(plan, name, "router"),
              "router_port": rs.port, "metrics_port": rs.metrics_port, "router_image": image,
              "metrics_port_text": str(rs.metrics_port),
              "router_image_source": source, "router_command": ["python3", "-m", "vllm_router.launch_router", *args],
              "router_cpu": str(rs.resources["cpu"]), "router_memory": str(rs.resources["memory"])}
    return [fill(d, values) for d in _load_all(cfg, "k8s/router.yaml")]


def gateway_objects(cfg: Config, plan: Plan) -> list[Obj]:
    gs = cfg.cluster.stack.gateway
    image, source = stack_image(cfg, "gateway")
    name = gateway_name(plan)
    front = (f"http://{router_name(plan)}:{cfg.cluster.stack.router.port}" if plan.router
             else f"http://{plan.name}:{plan.port}")
    config = yaml.safe_dump(gateway_config(cfg, plan.served_name, [front]), sort_keys=False)
    key, server_key = gs.master_key, cfg.cluster.secrets["api_key"]
    env = [{"name": k, "value": str(v)} for k, v in sorted(gs.env.items())]
    env += [{"name": key.env, "valueFrom": {"secretKeyRef": {"name": key.name, "key": key.key}}},
            {"name": cfg.cluster.api_key_env, "valueFrom": {"secretKeyRef": {
                "name": server_key.name, "key": server_key.key, "optional": True}}}]
    values = {"gateway_name": name, "namespace": plan.namespace, "gateway_labels": part_labels(plan, name, "gateway"),
              "gateway_port": gs.port, "gateway_image": image, "gateway_image_source": source,
              "gateway_config": config, "gateway_config_sha": hashlib.sha256(config.encode()).hexdigest(),
              "gateway_command": ["python3", "-m", "litellm.proxy.proxy_cli", "--config", "/etc/litellm/config.yaml",
                                  "--host", "0.0.0.0", "--port", str(gs.port)],
              "gateway_env": env, "gateway_cpu": str(gs.resources["cpu"]),
              "gateway_memory": str(gs.resources["memory"])}
    return [fill(d, values) for d in _load_all(cfg, "k8s/gateway.yaml")]


def render_stack(cfg: Config, plan: Plan) -> list[Obj]:
    """Every object of the rollout, in apply order: model storage/Service/workload, router, gateway."""
    objects = model_objects(cfg, plan)
    if plan.router:
        objects += router_objects(cfg, plan)
    if plan.gateway:
        objects += gateway_objects(cfg, plan)
    return objects
