"""build_config.yaml, read once into typed, frozen settings - the single place where pins and knobs live.

Why one loader: every environment override is applied in load.py and nowhere else, so a function
handed a `Config` (or the one section it needs) never looks at `os.environ`, and two parts of one run
cannot disagree about where the store is or which profile is built. A bad or missing value is a
`ConfigError` naming the key (or the variable): one line, said before any work starts.

Environment overrides (each replaces one setting):
  MINI_VLLM_CACHE -> store.local              MINI_VLLM_REMOTE_CACHE -> store.remote
  MINI_VLLM_MIRROR -> the source mirror dir   MINI_VLLM_NVCC -> toolchain.nvcc
  MINI_VLLM_EXT_DIR -> build/ext              MINI_VLLM_IMAGE_PROFILE -> images.profile
  SOURCE_DATE_EPOCH -> images.source_date_epoch
  MINI_VLLM_PORT -> cluster.port              MINI_VLLM_ROLLOUT_DIR -> cluster.state_dir
  MINI_VLLM_TOOLS_DIR -> the router / gateway venvs (.venv-tools)
  MINI_VLLM_IMAGE_ROUTER / MINI_VLLM_IMAGE_GATEWAY -> the router / gateway image (a digest reference)
  MINI_VLLM_ROUTER_PORT / MINI_VLLM_ROUTER_METRICS_PORT -> cluster.stack.router.port / .metrics_port
  $<cluster.api_key_env> -> the API key `invoke verify` sends (held in memory, never written)
  XDG_CACHE_HOME -> the store's default place when store.local is null
"""
from .load import load_config, parse_config, read_document
from .settings import (AutoscaleConfig, BaseImage, ClusterConfig, Config, ConfigError, GatewayConfig, ImageProfile,
                       ImagesConfig, KernelSet, ModelConfig, MonitoringConfig, PushConfig, RegistryConfig, RouterConfig,
                       SecretRef, SourcePin, StackConfig, StoreConfig, ToolchainConfig, UploadLimits, VerifyConfig,
                       WheelSet, WheelTarget)

__all__ = ["AutoscaleConfig", "BaseImage", "ClusterConfig", "Config", "ConfigError", "GatewayConfig", "ImageProfile",
           "ImagesConfig", "KernelSet", "ModelConfig", "MonitoringConfig", "PushConfig", "RegistryConfig",
           "RouterConfig", "SecretRef", "SourcePin", "StackConfig", "StoreConfig", "ToolchainConfig", "UploadLimits",
           "VerifyConfig", "WheelSet", "WheelTarget", "load_config", "parse_config", "read_document"]
