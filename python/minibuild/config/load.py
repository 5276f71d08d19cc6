"""Read build_config.yaml and the environment into a `Config` - the one place either is read.

Each section has one small parser; `_Doc` carries the dotted location of what it reads so every
error names the key ('cluster.port', '$MINI_VLLM_PORT'). Optional keys take the defaults written
here; required ones (pins, kernel sources, cluster names) have none.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, TypeVar

import yaml

from ..archive import Limits
from .settings import (AutoscaleConfig, BaseImage, ClusterConfig, Config, ConfigError, GatewayConfig, ImageProfile,
                       ImagesConfig, KernelSet, ModelConfig, MonitoringConfig, PushConfig, RegistryConfig, RouterConfig,
                       SecretRef, SourcePin, StackConfig, StoreConfig, ToolchainConfig, UploadLimits, VerifyConfig,
                       WheelSet, WheelTarget)

REPO_ROOT = Path(__file__).resolve().parents[3]
T = TypeVar("T")
_MISSING: Any = object()


class _Doc:
    """A mapping of the YAML with its dotted location, so that every error names the key."""

    def __init__(self, data: Any, where: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"build_config.yaml: '{where}' must be a mapping, got {data!r}")
        self.data, self.where = data, where

    def key(self, k: Any) -> str:
        return f"{self.where}.{k}" if self.where else str(k)

    def section(self, k: Any) -> "_Doc":
        return _Doc(self.data.get(k), self.key(k))

    def items(self) -> list[tuple[Any, "_Doc"]]:
        return [(k, self.section(k)) for k in self.data]

    def get(self, k: str, conv: Callable[[Any], T], default: Any = _MISSING) -> T:
        v = self.data.get(k)
        if v is None:
            if default is _MISSING:
                raise ConfigError(f"build_config.yaml: missing key '{self.key(k)}'")
            return default
        if conv is str and isinstance(v, (dict, list)):
            raise ConfigError(f"build_config.yaml: '{self.key(k)}' must be a single value, got {v!r}")
        try:
            return conv(v)
        except (TypeError, ValueError):
            raise ConfigError(f"build_config.yaml: '{self.key(k)}' has a bad value {v!r}") from None

    def strings(self, k: str) -> tuple[str, ...]:
        v = self.data.get(k) or []
        if not isinstance(v, list):
            raise ConfigError(f"build_config.yaml: '{self.key(k)}' must be a list, got {v!r}")
        return tuple(str(x) for x in v)

    def plain(self) -> dict[Any, Any]:
        """The mapping as data (a copy), for free-form settings such as a target's."""
        import copy

        return copy.deepcopy(self.data)


def _env(environ: Mapping[str, str], name: str, conv: Callable[[str], T], key: str) -> T | None:
    raw = environ.get(name)
    if not raw:
        return None
    try:
        return conv(raw)
    except ValueError:
        raise ConfigError(f"${name}={raw!r} is not valid (it overrides {key})") from None


def _path(root: Path, p: str) -> Path:
    q = Path(os.path.expandvars(p)).expanduser()
    return q if q.is_absolute() else root / q


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(v)
    return v


# ---- sections -------------------------------------------------------------------------------------

def store_config(d: _Doc, root: Path, env: Mapping[str, str]) -> StoreConfig:
    """$MINI_VLLM_CACHE, else store.local, else $XDG_CACHE_HOME/mini-vllm or ~/.cache/mini-vllm."""
    remote = env.get("MINI_VLLM_REMOTE_CACHE") or d.get("remote", str, None)
    if env.get("MINI_VLLM_CACHE"):
        return StoreConfig(Path(env["MINI_VLLM_CACHE"]).expanduser(), remote, "$MINI_VLLM_CACHE")
    local = d.get("local", str, None)
    if local:
        return StoreConfig(_path(root, local), remote, "store.local")
    xdg = env.get("XDG_CACHE_HOME")
    return StoreConfig((Path(xdg) if xdg else Path.home() / ".cache") / "mini-vllm", remote, "the default")


def _limits(base: Limits, d: _Doc) -> Limits:
    try:
        return base.override(d.data, f"build_config.yaml {d.where}")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def source_pins(d: _Doc, limits: _Doc, root: Path) -> dict[str, SourcePin]:
    """`sources:`, each pin's archive caps = `source_limits` with its own `limits:` on top."""
    base = _limits(Limits(), limits)
    out: dict[str, SourcePin] = {}
    for name, s in d.items():
        out[name] = SourcePin(name=name, repo=s.get("repo", str, ""), commit=s.get("commit", str),
                              tree_sha256=s.get("tree_sha256", str), subtrees=s.strings("subtrees"),
                              mirrors=s.strings("mirrors"), patches=s.strings("patches"),
                              version=s.get("version", str, ""), root=root, limits=_limits(base, s.section("limits")))
    return out


def toolchain_config(d: _Doc, env: Mapping[str, str]) -> ToolchainConfig:
    return ToolchainConfig(nvcc=env.get("MINI_VLLM_NVCC") or d.get("nvcc", str, "nvcc"),
                           host_compiler=d.get("host_compiler", str, None), arch=d.get("arch", str, "sm_90a"),
                           mem_reserve_gb=d.get("mem_reserve_gb", float, 1.0))


def kernel_set(name: str, s: _Doc) -> KernelSet:
    src = s.get("source", str, None)
    units = tuple(f"@{src}/{u}" for u in s.strings("units")) if src else ()
    units += s.strings("sources") + s.strings("extra_sources")
    incs = s.strings("include_dirs")
    if not units:
        raise ConfigError(f"build_config.yaml: '{s.where}' lists no sources/units")
    used = sorted(({src} if src else set()) | {i[1:].split("/")[0] for i in incs if i.startswith("@")})
    return KernelSet(name=name, units=units, include_dirs=incs, defines=s.strings("defines"),
                     flags=s.strings("flags"), gencode=s.strings("gencode"),
                     uses_torch=s.get("uses_torch", _bool, False), mem_gb_per_job=s.get("mem_gb_per_job", float, 1.0),
                     module=s.get("module", str, name), link_flags=s.strings("link_flags"), sources_used=tuple(used),
                     runtime=MappingProxyType(s.section("runtime").plain()))


def kernel_sets(d: _Doc) -> dict[str, KernelSet]:
    return {name: kernel_set(name, s) for name, s in d.items()}


def image_profile(name: str, p: _Doc) -> ImageProfile:
    b, w, t = p.section("base"), p.section("wheels"), p.section("target")
    base = BaseImage(kind=b.get("kind", str), lock=b.get("lock", str), spec=b.get("spec", str, ""),
                     ref=b.get("ref", str, ""))
    wheels = WheelSet(requirements=w.get("requirements", str), lock=w.get("lock", str),
                      index=w.get("index", str, "https://pypi.org/simple"), find_links=w.strings("find_links"))
    target = WheelTarget(python=t.get("python", str), glibc=t.get("glibc", str), arch=t.get("arch", str, "x86_64"))
    return ImageProfile(name=name, base=base, python=p.get("python", str), site_packages=p.get("site_packages", str),
                        wheels=wheels, target=target)


def upload_limits(d: _Doc, default: UploadLimits) -> UploadLimits:
    return UploadLimits(chunk_mib=d.get("chunk_mib", float, default.chunk_mib),
                        min_chunk_mib=d.get("min_chunk_mib", float, default.min_chunk_mib),
                        max_parts=d.get("max_parts", int, default.max_parts))


def push_config(d: _Doc) -> PushConfig:
    dflt = PushConfig()
    return PushConfig(parallel=max(1, d.get("parallel", int, dflt.parallel)), retries=d.get("retries", int, dflt.retries),
                      backoff_s=d.get("backoff_s", float, dflt.backoff_s),
                      backoff_max_s=d.get("backoff_max_s", float, dflt.backoff_max_s),
                      limits=upload_limits(d, dflt.limits), ecr=upload_limits(d.section("ecr"), dflt.ecr))


def images_config(d: _Doc, env: Mapping[str, str]) -> ImagesConfig:
    profiles = {n: image_profile(n, p) for n, p in d.section("profiles").items()}
    if not profiles:
        raise ConfigError("build_config.yaml: 'images.profiles' is empty")
    cfg = ImagesConfig(profile=env.get("MINI_VLLM_IMAGE_PROFILE") or d.get("profile", str, "local"),
                       profiles=MappingProxyType(profiles), stages=d.get("stages", str),
                       out_dir=d.get("out_dir", str, "build/images"),
                       epoch=_env(env, "SOURCE_DATE_EPOCH", int, "images.source_date_epoch")
                       if env.get("SOURCE_DATE_EPOCH") else d.get("source_date_epoch", int, 0),
                       gzip_level=d.get("gzip_level", int, 6), cuda_arch=d.get("cuda_arch", str, "sm_90a"),
                       refuse=d.strings("refuse"), push=push_config(d.section("push")))
    if cfg.profile not in profiles:
        where = "$MINI_VLLM_IMAGE_PROFILE" if env.get("MINI_VLLM_IMAGE_PROFILE") else "images.profile"
        raise ConfigError(f"{where}: unknown image profile {cfg.profile!r} (have: {', '.join(profiles)})")
    return cfg


def _secret(s: _Doc) -> SecretRef:
    return SecretRef(name=s.get("name", str), key=s.get("key", str), env=s.get("env", str))


def stack_config(d: _Doc, root: Path, env: Mapping[str, str]) -> StackConfig:
    r, g = d.section("router"), d.section("gateway")
    frozen = lambda s: MappingProxyType({str(k): v for k, v in s.plain().items()})  # noqa: E731
    port = _env(env, "MINI_VLLM_ROUTER_PORT", int, "cluster.stack.router.port") or r.get("port", int)
    mport = _env(env, "MINI_VLLM_ROUTER_METRICS_PORT", int, "cluster.stack.router.metrics_port") or r.get("metrics_port", int)
    router = RouterConfig(policies=r.strings("policies"), port=port, metrics_port=mport,
                          image_stage=r.get("image_stage", str, "router"),
                          session_header=r.get("session_header", str, "X-Session-ID"),
                          args=frozen(r.section("args")), resources=frozen(r.section("resources")),
                          image=_env(env, "MINI_VLLM_IMAGE_ROUTER", str, "the router image"))
    gateway = GatewayConfig(kinds=g.strings("kinds"), port=g.get("port", int), image_stage=g.get("image_stage", str, "gateway"),
                            master_key=_secret(g.section("master_key")),
                            env=MappingProxyType({str(k): str(v) for k, v in g.section("env").data.items()}),
                            resources=frozen(g.section("resources")),
                            image=_env(env, "MINI_VLLM_IMAGE_GATEWAY", str, "the gateway image"))
    tools = _env(env, "MINI_VLLM_TOOLS_DIR", str, "the tools' venvs (.venv-tools)")
    return StackConfig(router=router, gateway=gateway, tools_dir=_path(root, tools) if tools else root / ".venv-tools")


def monitoring_config(d: _Doc) -> MonitoringConfig:
    monitor = d.get("monitor", str, "podmonitor").lower()
    if monitor not in ("podmonitor", "servicemonitor", "none"):
        raise ConfigError(f"build_config.yaml: '{d.key('monitor')}' is {monitor!r}: "
                          "use podmonitor, servicemonitor or none")
    labels = MappingProxyType({str(k): str(v) for k, v in d.section("labels").data.items()})
    return MonitoringConfig(monitor=monitor, labels=labels,
                            path=d.get("path", str, "/metrics"), scrape_interval=d.get("scrape_interval", str, "15s"),
                            evaluation_interval=d.get("evaluation_interval", str, "15s"))


def autoscale_config(d: _Doc) -> AutoscaleConfig:
    a = d.section("adapter")
    cfg = AutoscaleConfig(
        metric=d.get("metric", str, "vllm:num_requests_waiting"), min_replicas=d.get("min_replicas", int, 1),
        max_replicas=d.get("max_replicas", int, 4), waiting_per_replica=d.get("waiting_per_replica", float, 5.0),
        prometheus_url=d.get("prometheus_url", str, "http://prometheus-operated.monitoring.svc:9090"),
        polling_interval_s=d.get("polling_interval_s", int, 15), scale_up_period_s=d.get("scale_up_period_s", int, 300),
        scale_down_window_s=d.get("scale_down_window_s", int, 900),
        adapter_namespace=a.get("namespace", str, "monitoring"), adapter_name=a.get("name", str, "prometheus-adapter"))
    if not 1 <= cfg.min_replicas <= cfg.max_replicas:
        raise ConfigError(f"build_config.yaml: '{d.key('min_replicas')}' / '{d.key('max_replicas')}': need "
                          f"1 <= min_replicas <= max_replicas (have {cfg.min_replicas}, {cfg.max_replicas})")
    if cfg.waiting_per_replica <= 0:
        raise ConfigError(f"build_config.yaml: '{d.key('waiting_per_replica')}' must be > 0")
    return cfg


def cluster_config(d: _Doc, root: Path, env: Mapping[str, str]) -> ClusterConfig:
    v = d.section("verify")
    verify = VerifyConfig(prompt=v.get("prompt", str), max_tokens=v.get("max_tokens", int),
                          timeout_s=v.get("timeout_s", float, 120.0), metrics=v.strings("metrics"))
    secrets = {k: _secret(s) for k, s in d.section("secrets").items()}
    variants = {}
    for k, s in d.section("variants").items():
        try:
            variants[int(k)] = MappingProxyType(s.plain())
        except ValueError:
            raise ConfigError(f"build_config.yaml: 'cluster.variants.{k}': a variant is named by its TP size") from None
    probes = d.section("probes")
    api_key_env = d.get("api_key_env", str, "MINI_VLLM_API_KEY")
    state = _env(env, "MINI_VLLM_ROLLOUT_DIR", str, "cluster.state_dir") or d.get("state_dir", str)
    return ClusterConfig(
        name=d.get("name", str), port=_env(env, "MINI_VLLM_PORT", int, "cluster.port") or d.get("port", int),
        state_dir=_path(root, state), field_manager=d.get("field_manager", str, "mini-vllm"),
        api_key_env=api_key_env, api_key=env.get(api_key_env) or None, secrets=MappingProxyType(secrets),
        probes=MappingProxyType({k: probes.get(k, int) for k in probes.data}),
        progress_deadline_s=d.get("progress_deadline_s", int), wait_timeout_s=d.get("wait_timeout_s", float),
        variants=MappingProxyType(variants), env=MappingProxyType({str(k): str(x) for k, x in d.section("env").data.items()}),
        verify=verify, stack=stack_config(d.section("stack"), root, env),
        models=MappingProxyType({str(k): MappingProxyType(s.plain()) for k, s in d.section("models").items()}),
        targets=MappingProxyType({k: MappingProxyType(s.plain()) for k, s in d.section("targets").items()}),
        monitoring=monitoring_config(d.section("monitoring")), autoscale=autoscale_config(d.section("autoscale")))


# ---- the file ---------------------------------------------------------------------------------------

def read_document(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """build_config.yaml as plain data (tests edit a copy of this, then call `parse_config`)."""
    path = Path(path) if path else REPO_ROOT / "build_config.yaml"
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return doc


def load_config(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read build_config.yaml (default: the checkout's) and apply the environment, once."""
    path = Path(path) if path else REPO_ROOT / "build_config.yaml"
    return parse_config(read_document(path), path.resolve().parent, environ)


def parse_config(doc: dict[str, Any], root: str | os.PathLike[str],
                 environ: Mapping[str, str] | None = None) -> Config:
    """Typed settings from YAML data; `root` is the checkout that relative paths start from."""
    env = os.environ if environ is None else environ
    top, base = _Doc(doc, ""), Path(root).resolve()
    model, reg = top.section("model"), top.section("registry")
    ext = _env(env, "MINI_VLLM_EXT_DIR", str, "the module directory build/ext")
    mirror = _env(env, "MINI_VLLM_MIRROR", str, "the source mirror directory")
    return Config(
        root=base,
        project_name=top.section("project").get("name", str, "mini-vllm"),
        store=store_config(top.section("store"), base, env),
        sources=MappingProxyType(source_pins(top.section("sources"), top.section("source_limits"), base)),
        mirror_dir=Path(mirror).expanduser().resolve() if mirror else None,
        toolchain=toolchain_config(top.section("toolchain"), env),
        kernels=MappingProxyType(kernel_sets(top.section("kernels"))),
        ext_dir=Path(ext) if ext else base / "build" / "ext",
        images=images_config(top.section("images"), env),
        registry=RegistryConfig(default=reg.get("default", str, ""), region=reg.get("region", str, ""),
                                prefix=reg.get("prefix", str, "")),
        cluster=cluster_config(top.section("cluster"), base, env),
        model=ModelConfig(path=model.get("path", str, ""), tiny_dir=_path(base, model.get("tiny_dir", str))),
        server_port=top.section("server").get("port", int, 8000),
    )
