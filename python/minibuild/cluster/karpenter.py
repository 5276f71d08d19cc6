"""The eks target's GPU nodes: a Karpenter NodePool + EC2NodeClass (cluster.targets.eks.karpenter).

Why rendered with the rollout: the server's nodeSelector (`karpenter.sh/nodepool: NAME`) and its
`nvidia.com/gpu` toleration only schedule if a pool of that name exists with that taint; rendering
both from one config keeps them in step. The pool's name is taken from the node selector. Both
objects are cluster-scoped and shared infrastructure: `--delete` leaves them (like the model cache).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from minibuild.cluster.templates import fill
from minibuild.cluster.settings import Plan, RolloutError

NODEPOOL_LABEL = "karpenter.sh/nodepool"


def render(cluster_dir: Path, plan: Plan, k: dict[str, Any]) -> list[dict[str, Any]]:
    """[NodePool, EC2NodeClass] for an eks plan, or [] when the config has no karpenter section."""
    if not k:
        return []
    pool = (plan.settings.get("node_selector") or {}).get(NODEPOOL_LABEL)
    if not pool:
        raise RolloutError(f"cluster.targets.eks.karpenter is set but node_selector has no {NODEPOOL_LABEL}: "
                           "name the NodePool the server should run on there")
    cluster = k.get("cluster_name")
    if not cluster:
        raise RolloutError("cluster.targets.eks.karpenter.cluster_name is empty: set it to your EKS cluster's name")
    labels = {kk: v for kk, v in plan.labels.items() if kk.startswith("app.kubernetes.io/")}
    values = {
        "nodepool": pool, "labels": labels, "node_labels": {"mini-vllm/gpu-pool": pool},
        "instance_families": [str(x) for x in k.get("instance_families") or []],
        "gpu_counts": [str(x) for x in k.get("gpu_counts") or []],
        "capacity_types": [str(x) for x in k.get("capacity_types") or ["on-demand"]],
        "gpu_limit": int(k.get("gpu_limit", 64)),
        "consolidation_policy": str(k.get("consolidation_policy", "WhenEmpty")),
        "consolidate_after": str(k.get("consolidate_after", "30m")),
        "ami_alias": str(k.get("ami_alias", "al2023@latest")),
        "node_role": str(k.get("node_role") or f"KarpenterNodeRole-{cluster}"),
        "cluster_name": str(cluster), "root_volume": str(k.get("root_volume", "500Gi")),
    }
    for key in ("instance_families", "gpu_counts"):
        if not values[key]:
            raise RolloutError(f"cluster.targets.eks.karpenter.{key} is empty: list at least one value")
    load = lambda rel: yaml.safe_load((cluster_dir / rel).read_text())  # noqa: E731
    return [fill(load("k8s/karpenter-nodepool.yaml"), values), fill(load("k8s/karpenter-ec2nodeclass.yaml"), values)]
