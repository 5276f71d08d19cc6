"""Resolve what a rollout deploys - target, TP variant, model, image, names - from build_config.yaml.

One place turns config + flags into a `Plan`, so render, apply, wait, status and verify all agree on
names and labels. Kubernetes targets need an image pinned by digest: a tag can move under a running
Deployment, so a tag-only reference is refused here, before anything is rendered.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minibuild.config import Config, ConfigError

TARGETS = ("hyperpod", "eks", "slurm", "local")
KUBE_TARGETS = ("hyperpod", "eks")
_DIGEST_REF = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")


class RolloutError(RuntimeError):
    """A rollout cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class Plan:
    target: str
    tp: int
    name: str                      # object / job name: PREFIX-<served name as a DNS label>
    namespace: str | None          # Kubernetes only
    port: int
    model_path: str
    served_name: str
    image: str | None              # Kubernetes (and containerised Slurm): REPO@sha256:...
    image_source: str = ""         # where the image reference came from (Slurm without one: why not)
    settings: dict[str, Any] = field(default_factory=dict)   # cluster.targets.<target> + the model's overrides
    variant: dict[str, Any] = field(default_factory=dict)    # cluster.variants.<tp>
    replicas: int = 1                  # model servers (stack.py: replicas, router, gateway)
    router: str | None = None          # vllm-router policy in front of the replicas, or None
    gateway: str | None = None         # "litellm" in front of the router / Service, or None
    port_fixed: bool = False       # the port comes from cluster.models.<served>.port (not allocated)
    autoscale: str | None = None   # Kubernetes: keda | hpa (cluster.autoscale), None = fixed replicas

    @property
    def slug(self) -> str:
        return slug(self.served_name)

    @property
    def labels(self) -> dict[str, str]:
        """Labels on everything rollout makes; `--delete` and status select by `selector`."""
        return {"app": self.name, "app.kubernetes.io/name": "mini-vllm",
                "app.kubernetes.io/managed-by": "mini-vllm", "mini-vllm/model": self.slug,
                "mini-vllm/tp": str(self.tp), "mini-vllm/stack": self.name}

    @property
    def selector(self) -> str:
        return f"app={self.name},app.kubernetes.io/managed-by=mini-vllm"


MANAGED = "app.kubernetes.io/managed-by=mini-vllm"   # selects every deployment rollout made


def slug(served: str) -> str:
    """A served model name as a DNS-1035 label part ("openai/gpt-oss-120b" -> "openai-gpt-oss-120b")."""
    s = re.sub(r"[^a-z0-9]+", "-", served.lower()).strip("-")
    if not s:
        raise RolloutError(f"served model name {served!r} has no letters or digits: pass --served-model-name NAME")
    if not s[0].isalpha():
        s = "m-" + s
    return s


def object_name(cfg: Config, served: str) -> str:
    """PREFIX-SLUG, at most 63 characters (a Service name); a long name keeps a hash of the whole."""
    name = f"{cfg.cluster.name}-{slug(served)}"
    if len(name) > 63:
        name = name[:56].rstrip("-") + "-" + hashlib.sha256(served.encode()).hexdigest()[:6]
    return name


def served_name_of(model_path: str) -> str:
    """The default served name: the model directory's last component (as `mini-vllm serve` does)."""
    return Path(str(model_path).rstrip("/")).name or str(model_path)


def model_overrides(cfg: Config, served: str) -> dict[str, Any]:
    """cluster.models.<served>: its port and per-target overrides ({} when the model has none)."""
    return copy.deepcopy(dict(cfg.cluster.models.get(served) or {}))


def base_port(cfg: Config) -> int:
    return cfg.cluster.port


def reserved_ports(cfg: Config, served: str) -> dict[int, str]:
    """Ports that cluster.models gives to other models: allocation never hands them out."""
    return {int(m["port"]): f"cluster.models.{name}" for name, m in cfg.cluster.models.items()
            if name != served and m.get("port") is not None}


def choose_port(plan: Plan, own: int | None, taken: dict[int, str], reserved: dict[int, str] | None = None) -> int:
    """The port for a local / Slurm deployment: a configured port (an error when another deployment holds
    it), else the one it had, else the lowest from the base that no other live deployment holds and no
    other model has configured."""
    if plan.port_fixed:
        if plan.port in taken:
            raise RolloutError(f"port {plan.port} (cluster.models.{plan.served_name}.port) is held by "
                               f"{taken[plan.port]}: change one of them or delete it")
        return plan.port
    busy = {**(reserved or {}), **taken}
    if own is not None and own not in busy:
        return own
    port = plan.port
    while port in busy:
        port += 1
    return port


def state_dir(cfg: Config, target: str) -> Path:
    """Where rollout keeps a target's state (pids, logs, job scripts): cluster.state_dir/<target>."""
    d = cfg.cluster.state_dir / target
    d.mkdir(parents=True, exist_ok=True)
    return d


def image_reference(cfg: Config, image: str | None, stage: str = "server") -> tuple[str, str]:
    """(REPO@sha256:..., source) from --image (a reference, or a bare digest in registry.default) or
    build/images/<stage>.json; refuses tag-only references."""
    if image and image.startswith("sha256:"):   # a bare digest: the server image in the default registry
        registry = cfg.registry
        ref, source = f"{registry.default}/{registry.prefix}{stage}@{image}", "--image + registry.default"
    elif image:
        ref, source = image, "--image"
    else:
        record = cfg.path(cfg.images.out_dir) / f"{stage}.json"
        if not record.exists():
            raise RolloutError(f"no image: {record} does not exist. Build and push one "
                               f"(`invoke image --stage {stage} --push REGISTRY/NAMESPACE`) or pass --image REPO@sha256:...")
        try:
            data = json.loads(record.read_text())
        except json.JSONDecodeError as exc:
            raise RolloutError(f"{record}: not valid JSON ({exc})") from exc
        ref, source = data.get("reference"), str(record)
        if not ref:
            raise RolloutError(f"{record}: the {stage} image (digest {data.get('digest')}) was built but not "
                               "pushed, so a cluster cannot pull it. Push it (`invoke image --stage "
                               f"{stage} --push REGISTRY/NAMESPACE`) or pass --image REPO@sha256:...")
    if not _DIGEST_REF.match(ref):
        raise RolloutError(f"image {ref!r} is not pinned by digest (REPO@sha256:<64 hex>): a tag can change "
                           "under a running Deployment. Pass the digest reference that `invoke image` printed.")
    return ref, source


def make_plan(cfg: Config, target: str, tp: int = 1, image: str | None = None,
              model: str | None = None, served_name: str | None = None, autoscale: str | None = None) -> Plan:
    """Everything a rollout of (target, model) needs, with config errors named. The name - and so the
    Kubernetes objects, the Slurm job, the local process - derives from the served model name."""
    if target not in TARGETS:
        raise RolloutError(f"unknown target {target!r}: choose one of {', '.join(TARGETS)}")
    tp = int(tp)
    variants = cfg.cluster.variants
    if tp not in variants:
        raise RolloutError(f"no TP variant {tp} in build_config.yaml cluster.variants "
                           f"(have {sorted(variants)})")
    if target not in cfg.cluster.targets:
        raise ConfigError(f"build_config.yaml: missing key 'cluster.targets.{target}'")
    settings = copy.deepcopy(dict(cfg.cluster.targets[target]))
    if target == "local":
        default_model = settings.get("model_path") or str(cfg.model.tiny_dir)
    else:
        default_model = settings.get("model_path") or cfg.model.path
        if not default_model:
            raise ConfigError("build_config.yaml: missing key 'model.path'")
    model_path = model or default_model
    served = served_name or served_name_of(model_path)
    if not served or any(c.isspace() for c in served):
        raise RolloutError(f"served model name {served!r} is empty or has spaces: pass --served-model-name NAME")
    overrides = model_overrides(cfg, served)
    settings.update(overrides.get(target) or {})
    ref, source = None, ""
    if target in KUBE_TARGETS:
        ref, source = image_reference(cfg, image)
    elif target == "slurm":   # a container runtime runs the image; without one the job runs the checkout
        try:
            ref, source = image_reference(cfg, image)
        except RolloutError as exc:
            if image:
                raise
            source = str(exc)   # why there is no image (slurm_runtime reports it)
    if autoscale and (target not in KUBE_TARGETS or autoscale not in ("keda", "hpa")):
        raise RolloutError(f"--autoscale {autoscale}: choose keda or hpa, on a Kubernetes target (hyperpod, eks); "
                           f"{target} runs a fixed set of servers")
    if target in KUBE_TARGETS and not settings.get("namespace"):
        raise ConfigError(f"build_config.yaml: missing key 'cluster.targets.{target}.namespace'")
    # Kubernetes: every pod has its own IP, so all models listen on cluster.port. Local / Slurm share
    # hosts: the model's configured port, else one allocated at rollout (choose_port).
    fixed = target not in KUBE_TARGETS and overrides.get("port") is not None
    port = int(overrides["port"]) if fixed else base_port(cfg)
    return Plan(target=target, tp=tp, name=object_name(cfg, served), namespace=settings.get("namespace"),
                port=port, model_path=str(model_path), served_name=served, image=ref, image_source=source,
                settings=settings, variant=dict(variants[tp]), port_fixed=fixed, autoscale=autoscale or None)
