"""What the HTTP handlers share: the engine once loaded, the served name, limits, metrics.

The model is loaded before the server listens (api/app.py `load_model`), so `engine` is set whenever a
request arrives; `require_engine()` still guards the handlers (a 503, never an AttributeError).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mini_vllm.api.engine_client import EngineClient
from mini_vllm.api.errors import APIError
from mini_vllm.api.metrics import ServerMetrics

if TYPE_CHECKING:
    from mini_vllm.harmony import HarmonyTokens


@dataclass
class ServerState:
    model_name: str
    aliases: tuple[str, ...] = ()              # further --served-model-name values (listed in /v1/models)
    also_accepted: tuple[str, ...] = ()        # names requests may use that are not listed (a local model path)
    api_key: str | None = None
    switch_interval_ms: float | None = None   # the GIL switch interval to set at startup (None: leave it)
    gc_freeze: bool = True                    # gc.freeze() the start-up heap once the engine is loaded
    max_logprobs: int = 20                    # --max-logprobs
    sampling_defaults: dict[str, Any] = field(default_factory=dict)   # --generation-config: unset request fields
    log_stats_interval_s: float | None = 10.0  # periodic throughput/queue log line (None: --disable-log-stats)
    engine: EngineClient | None = None
    load_seconds: float | None = None
    created: int = 0
    metrics: ServerMetrics = field(init=False)
    _harmony: "HarmonyTokens | None" = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.metrics = ServerMetrics(self.model_name)

    def require_engine(self) -> EngineClient:
        if self.engine is None:
            raise APIError(503, "model is not loaded")
        return self.engine

    def check_model(self, requested: str | None) -> None:
        if requested and requested != self.model_name and requested not in self.aliases + self.also_accepted:
            raise APIError(404, f"The model `{requested}` does not exist.", "model", "model_not_found")

    @property
    def max_model_len(self) -> int:
        return int(self.require_engine().model_config.max_model_len)

    @property
    def harmony(self) -> "HarmonyTokens":
        """HarmonyTokens of the loaded tokenizer (looked up once)."""
        if self._harmony is None:
            from mini_vllm.harmony import HarmonyTokens
            self._harmony = HarmonyTokens.from_tokenizer(self.require_engine().tokenizer)
        return self._harmony
