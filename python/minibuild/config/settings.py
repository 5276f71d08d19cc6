"""The typed, frozen settings build_config.yaml is read into (load.py reads the file, once).

Why dataclasses and not the YAML's dicts: a function states the section it needs in its signature,
a misspelt key fails where it is read (load.py names it) instead of deep inside a build, and nothing
can change a setting half-way through a run. Paths are resolved against the checkout on load.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..archive import Limits
from ..hashing import canonical_key, digest_file


class ConfigError(ValueError):
    """build_config.yaml (or an environment override) is missing a key or holds a bad value; names it."""


# ---- the sections --------------------------------------------------------------------------------

@dataclass(frozen=True)
class StoreConfig:
    root: Path                 # the local content-addressed store (resolved)
    remote: str | None         # s3://bucket/prefix, file:///dir or None
    root_from: str             # which setting chose `root` (shown by `invoke cache`)


@dataclass(frozen=True)
class SourcePin:
    """One `sources:` entry: a commit plus the hash of the extracted tree of its subtrees."""

    name: str
    repo: str
    commit: str
    tree_sha256: str
    subtrees: tuple[str, ...] = ()
    mirrors: tuple[str, ...] = ()
    patches: tuple[str, ...] = ()     # repo-relative patch files
    version: str = ""
    root: Path = Path(".")            # the checkout (patches are relative to it)
    limits: Limits = Limits()         # caps on its archives (source_limits, then the pin's `limits:`)

    @property
    def tree_id(self) -> str:
        """Store id: the tree hash, or a hash of it and the patches' contents when patched."""
        if not self.patches:
            return self.tree_sha256
        return canonical_key({"tree": self.tree_sha256,
                              "patches": [digest_file(self.root / p) for p in self.patches]})


@dataclass(frozen=True)
class ToolchainConfig:
    nvcc: str                  # name on PATH or absolute path
    host_compiler: str | None  # -ccbin; None = nvcc's default (g++)
    arch: str
    mem_reserve_gb: float


@dataclass(frozen=True)
class KernelSet:
    """One `kernels:` entry of build_config.yaml (format in docs/build.md)."""

    name: str
    units: tuple[str, ...]            # logical paths
    include_dirs: tuple[str, ...]     # logical ('kernels/include', '@fa3/hopper')
    defines: tuple[str, ...]
    flags: tuple[str, ...]
    gencode: tuple[str, ...]
    uses_torch: bool
    mem_gb_per_job: float
    module: str
    link_flags: tuple[str, ...]
    sources_used: tuple[str, ...]     # pinned source names this set needs
    runtime: Mapping[str, Any]        # what the runtime may ask of the module (into manifest.json)


@dataclass(frozen=True)
class BaseImage:
    kind: str                  # debian-debs | registry
    lock: str
    spec: str = ""             # debian-debs: the package spec
    ref: str = ""              # registry: the base image reference


@dataclass(frozen=True)
class WheelSet:
    requirements: str
    lock: str                                 # a PEP 751 pylock file (URL + size + sha256 per wheel)
    index: str = "https://pypi.org/simple"    # the only index `invoke image --lock` reads
    find_links: tuple[str, ...] = ()          # local wheel directories it reads too


@dataclass(frozen=True)
class WheelTarget:
    """The image's interpreter, for which wheels are resolved and installed."""

    python: str                # "3.13"
    glibc: str                 # the base's glibc: manylinux platforms from it down to 2.17
    arch: str = "x86_64"


@dataclass(frozen=True)
class ImageProfile:
    name: str
    base: BaseImage
    python: str
    site_packages: str
    wheels: WheelSet
    target: WheelTarget


@dataclass(frozen=True)
class UploadLimits:
    chunk_mib: float                          # PATCH chunk size; 0 = one monolithic PUT per blob
    min_chunk_mib: float = 0                  # every chunk but the last at least this (ECR: 5)
    max_parts: int = 0                        # chunks per blob at most (ECR: 4,200); 0 = no limit


@dataclass(frozen=True)
class PushConfig:
    parallel: int = 4                         # blobs uploaded at once
    retries: int = 6                          # per request, on dropped connections and 408/429/5xx
    backoff_s: float = 1.0                    # first wait, doubling (with jitter) up to backoff_max_s
    backoff_max_s: float = 30.0
    limits: UploadLimits = UploadLimits(64)
    ecr: UploadLimits = UploadLimits(10, 5, 4200)


@dataclass(frozen=True)
class ImagesConfig:
    profile: str                              # the default profile (MINI_VLLM_IMAGE_PROFILE applied)
    profiles: Mapping[str, ImageProfile]
    stages: str                               # repo-relative path of the stage definitions
    out_dir: str
    epoch: int                                # SOURCE_DATE_EPOCH applied
    gzip_level: int
    cuda_arch: str
    refuse: tuple[str, ...] = ()              # file-name patterns never packed from our own files
    push: PushConfig = PushConfig()

    def select(self, name: str | None = None) -> ImageProfile:
        """The named profile (default: `profile`), or a ConfigError listing the known ones."""
        name = name or self.profile
        if name not in self.profiles:
            raise ConfigError(f"unknown image profile {name!r} (have: {', '.join(self.profiles)})")
        return self.profiles[name]


@dataclass(frozen=True)
class RegistryConfig:
    default: str
    region: str
    prefix: str


@dataclass(frozen=True)
class SecretRef:
    name: str
    key: str
    env: str


@dataclass(frozen=True)
class VerifyConfig:
    prompt: str
    max_tokens: int
    timeout_s: float
    metrics: tuple[str, ...]


@dataclass(frozen=True)
class RouterConfig:
    """cluster.stack.router: the vllm-router in front of the replicas."""
    policies: tuple[str, ...]
    port: int
    metrics_port: int
    image_stage: str
    session_header: str
    args: Mapping[str, Any]          # vllm-router flags (name -> value; True = bare flag)
    resources: Mapping[str, str]
    image: str | None = None         # $MINI_VLLM_IMAGE_ROUTER: a digest reference instead of build/images/router.json


@dataclass(frozen=True)
class GatewayConfig:
    """cluster.stack.gateway: the LiteLLM proxy in front of the router / Service."""
    kinds: tuple[str, ...]
    port: int
    image_stage: str
    master_key: SecretRef
    env: Mapping[str, str]
    resources: Mapping[str, str]
    image: str | None = None         # $MINI_VLLM_IMAGE_GATEWAY: a digest reference instead of build/images/gateway.json


@dataclass(frozen=True)
class StackConfig:
    router: RouterConfig
    gateway: GatewayConfig
    tools_dir: Path                  # the tools' own venvs (.venv-tools; MINI_VLLM_TOOLS_DIR applied)


@dataclass(frozen=True)
class MonitoringConfig:
    """cluster.monitoring: how Prometheus finds the servers and the router (docs/observability.md)."""
    monitor: str                     # Kubernetes: podmonitor | servicemonitor | none
    labels: Mapping[str, str]        # on the monitors (what kube-prometheus-stack selects them by)
    path: str                        # the servers' metrics path
    scrape_interval: str             # Prometheus durations ("15s")
    evaluation_interval: str


@dataclass(frozen=True)
class AutoscaleConfig:
    """cluster.autoscale: `--autoscale keda|hpa` on the servers' queue (cluster/autoscale.py)."""
    metric: str                      # vllm:num_requests_waiting
    min_replicas: int
    max_replicas: int
    waiting_per_replica: float       # threshold: desired = ceil(total waiting / this)
    prometheus_url: str              # where KEDA queries Prometheus
    polling_interval_s: int
    scale_up_period_s: int           # at most one replica added per this many seconds
    scale_down_window_s: int         # HPA scale-down stabilization window
    adapter_namespace: str           # hpa: prometheus-adapter's ConfigMap
    adapter_name: str


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    port: int                                  # MINI_VLLM_PORT applied
    state_dir: Path                            # resolved; MINI_VLLM_ROLLOUT_DIR applied
    field_manager: str
    api_key_env: str
    api_key: str | None = field(repr=False)    # the value of $<api_key_env>, if set
    secrets: Mapping[str, SecretRef]
    probes: Mapping[str, int]
    progress_deadline_s: int
    wait_timeout_s: float
    variants: Mapping[int, Mapping[str, Any]]
    env: Mapping[str, str]
    verify: VerifyConfig
    stack: StackConfig
    models: Mapping[str, Mapping[str, Any]]    # per served model name: `port` and per-target overrides
    targets: Mapping[str, Mapping[str, Any]]   # per target: its own settings (documented in the YAML)
    monitoring: MonitoringConfig
    autoscale: AutoscaleConfig


@dataclass(frozen=True)
class ModelConfig:
    path: str                  # on the cluster
    tiny_dir: Path             # resolved


@dataclass(frozen=True)
class Config:
    root: Path                 # the checkout holding build_config.yaml
    project_name: str
    store: StoreConfig
    sources: Mapping[str, SourcePin]
    mirror_dir: Path | None    # MINI_VLLM_MIRROR (a task's --mirror-dir wins over it)
    toolchain: ToolchainConfig
    kernels: Mapping[str, KernelSet]
    ext_dir: Path              # where `invoke kernels` installs modules (MINI_VLLM_EXT_DIR applied)
    images: ImagesConfig
    registry: RegistryConfig
    cluster: ClusterConfig
    model: ModelConfig
    server_port: int

    def path(self, rel: str | os.PathLike[str]) -> Path:
        """A config path relative to the checkout (absolute paths stay)."""
        p = Path(os.path.expandvars(str(rel))).expanduser()
        return p if p.is_absolute() else self.root / p


