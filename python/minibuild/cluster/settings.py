"""Resolve what a rollout deploys - target, TP variant, model, image, names - from build_config.yaml.

One place turns config + flags into a `Plan`, so render, apply, wait, status and verify all agree on
names and labels. Kubernetes targets need an image pinned by digest: a tag can move under a running
Deployment, so a tag-only reference is refused here, before anything is rendered.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minibuild.config import ConfigError, require

TARGETS = ("hyperpod", "eks", "slurm", "local")
KUBE_TARGETS = ("hyperpod", "eks")
_DIGEST_REF = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")


class RolloutError(RuntimeError):
    """A rollout cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class Plan:
    target: str
    tp: int
    name: str                      # object / job name, NAME-tpN
    namespace: str | None          # Kubernetes only
    port: int
    model_path: str
    served_name: str
    image: str | None              # Kubernetes only: REPO@sha256:...
    image_source: str = ""         # where the image reference came from
    settings: dict[str, Any] = field(default_factory=dict)   # cluster.targets.<target>
    variant: dict[str, Any] = field(default_factory=dict)    # cluster.variants.<tp>
    replicas: int = 1                  # model servers (stack.py: replicas, router, gateway)
    router: str | None = None          # vllm-router policy in front of the replicas, or None
    gateway: str | None = None         # "litellm" in front of the router / Service, or None

    @property
    def labels(self) -> dict[str, str]:
        """Labels on everything rollout makes; `--delete` and status select by `selector`."""
        return {"app": self.name, "app.kubernetes.io/name": "mini-vllm",
                "app.kubernetes.io/managed-by": "mini-vllm", "mini-vllm/tp": str(self.tp),
                "mini-vllm/stack": self.name}

    @property
    def selector(self) -> str:
        return f"app={self.name},app.kubernetes.io/managed-by=mini-vllm"


def repo_root(cfg: dict[str, Any]) -> Path:
    return Path(cfg.get("_root") or ".").resolve()


def resolve_path(cfg: dict[str, Any], path: str) -> Path:
    """A config path relative to the repository root (absolute paths stay)."""
    p = Path(path)
    return p if p.is_absolute() else repo_root(cfg) / p


def state_dir(cfg: dict[str, Any], target: str) -> Path:
    """Where rollout keeps a target's state (pids, logs, job scripts); MINI_VLLM_ROLLOUT_DIR overrides."""
    base = os.environ.get("MINI_VLLM_ROLLOUT_DIR") or require(cfg, "cluster.state_dir")
    d = resolve_path(cfg, base) / target
    d.mkdir(parents=True, exist_ok=True)
    return d


def image_reference(cfg: dict[str, Any], image: str | None) -> tuple[str, str]:
    """(REPO@sha256:..., source) from --image (a reference, or a bare digest in registry.default) or
    build/images/server.json; refuses tag-only references."""
    if image and image.startswith("sha256:"):   # a bare digest: the server image in the default registry
        registry = require(cfg, "registry")
        ref, source = f"{registry['default']}/{registry.get('prefix', '')}server@{image}", "--image + registry.default"
    elif image:
        ref, source = image, "--image"
    else:
        record = repo_root(cfg) / "build/images/server.json"
        if not record.exists():
            raise RolloutError(f"no image: {record} does not exist. Build and push one "
                               "(`invoke image --stage server --push REGISTRY/REPO:TAG`) or pass --image REPO@sha256:...")
        try:
            data = json.loads(record.read_text())
        except json.JSONDecodeError as exc:
            raise RolloutError(f"{record}: not valid JSON ({exc})") from exc
        ref, source = data.get("reference"), str(record)
        if not ref:
            raise RolloutError(f"{record}: the server image (digest {data.get('digest')}) was built but not "
                               "pushed, so a cluster cannot pull it. Push it (`invoke image --stage server "
                               "--push REGISTRY/REPO:TAG`) or pass --image REPO@sha256:...")
    if not _DIGEST_REF.match(ref):
        raise RolloutError(f"image {ref!r} is not pinned by digest (REPO@sha256:<64 hex>): a tag can change "
                           "under a running Deployment. Pass the digest reference that `invoke image` printed.")
    return ref, source


def make_plan(cfg: dict[str, Any], target: str, tp: int, image: str | None = None,
              model: str | None = None) -> Plan:
    """Everything a rollout of (target, tp) needs, with config errors named."""
    if target not in TARGETS:
        raise RolloutError(f"unknown target {target!r}: choose one of {', '.join(TARGETS)}")
    tp = int(tp)
    cluster = require(cfg, "cluster")
    variants = {int(k): v for k, v in (cluster.get("variants") or {}).items()}
    if tp not in variants:
        raise RolloutError(f"no TP variant {tp} in build_config.yaml cluster.variants "
                           f"(have {sorted(variants)})")
    settings = dict(require(cfg, f"cluster.targets.{target}") or {})
    name = f"{require(cfg, 'cluster.name')}-tp{tp}"
    if target == "local":
        model_path = model or settings.get("model_path") or str(resolve_path(cfg, require(cfg, "model.tiny_dir")))
    else:
        model_path = model or settings.get("model_path") or require(cfg, "model.path")
    served = (require(cfg, "model.served_name") if target in ("hyperpod", "eks", "slurm")
              else Path(model_path).name)
    ref, source = (image_reference(cfg, image) if target in KUBE_TARGETS else (None, ""))
    if target in KUBE_TARGETS and not settings.get("namespace"):
        raise ConfigError(f"build_config.yaml: missing key 'cluster.targets.{target}.namespace'")
    return Plan(target=target, tp=tp, name=name, namespace=settings.get("namespace"),
                port=int(os.environ.get("MINI_VLLM_PORT") or require(cfg, "cluster.port")), model_path=str(model_path), served_name=served,
                image=ref, image_source=source, settings=settings, variant=dict(variants[tp]))
