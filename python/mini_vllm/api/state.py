"""What the HTTP handlers share: the engine once loaded, the served name, limits, metrics.

The model is loaded before the server listens (api/app.py `load_model`), so `engine` is set whenever a
request arrives; `require_engine()` still guards the handlers (a 503, never an AttributeError).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mini_vllm.api.errors import APIError
from mini_vllm.metrics import ServerMetrics


@dataclass
class ServerState:
    model_name: str
    api_key: str | None = None
    engine: Any | None = None
    load_seconds: float | None = None
    created: int = 0
    metrics: ServerMetrics = field(init=False)
    _harmony: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.metrics = ServerMetrics(self.model_name)

    def require_engine(self) -> Any:
        if self.engine is None:
            raise APIError(503, "model is not loaded")
        return self.engine

    def check_model(self, requested: str | None) -> None:
        if requested and requested != self.model_name:
            raise APIError(404, f"The model `{requested}` does not exist.", "model", "model_not_found")

    @property
    def max_model_len(self) -> int:
        return int(self.require_engine().model_config.max_model_len)

    @property
    def harmony(self) -> Any:
        """HarmonyTokens of the loaded tokenizer (looked up once)."""
        if self._harmony is None:
            from mini_vllm.harmony import HarmonyTokens
            self._harmony = HarmonyTokens.from_tokenizer(self.require_engine().tokenizer)
        return self._harmony
