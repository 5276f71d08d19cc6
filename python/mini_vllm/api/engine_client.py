"""What the HTTP layer needs from an engine: a Protocol that AsyncEngine satisfies.

Why a Protocol and not AsyncEngine itself: the API module must answer /health before torch is even
imported (the engine module pulls it in), and bench stand-ins (bench/api_overhead_server.py) serve
through the real API with another engine behind it. Type checkers check AsyncEngine against this.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, AsyncIterator, Protocol

if TYPE_CHECKING:
    from mini_vllm.engine.outputs import RequestOutput
    from mini_vllm.engine.stats import EngineStats
    from mini_vllm.model.tokenizer import Tokenizer
    from mini_vllm.sampling_params import SamplingParams


class ModelConfigLike(Protocol):
    max_model_len: int
    vocab_size: int


class EngineClient(Protocol):
    tokenizer: "Tokenizer"
    model_config: ModelConfigLike

    @property
    def is_ready(self) -> bool: ...

    def generate(self, request_id: str, prompt_token_ids: list[int], params: "SamplingParams"
                 ) -> AsyncIterator["RequestOutput"]: ...

    def abort(self, request_id: str) -> None: ...

    def stats(self) -> "EngineStats": ...

    def shutdown(self) -> None: ...
