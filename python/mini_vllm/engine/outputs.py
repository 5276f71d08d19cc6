"""What the engine hands back for a request, step by step (the engine <-> API contract).

A request with n > 1 has n CompletionOutputs, one per sample, indexed 0..n-1. Each RequestOutput
carries the *cumulative* state of every sample; `text_delta`/`token_ids_delta` hold what is new
since the previous RequestOutput, so that streaming needs no diffing.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    top: list[tuple[int, str, float]] = field(default_factory=list)  # (id, text, logprob)


@dataclass
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    text_delta: str = ""
    token_ids_delta: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None          # cumulative, one per generated token
    logprobs_delta: list[TokenLogprob] | None = None
    finish_reason: str | None = None                     # None | "stop" | "length" | "abort" | "error"
    stop_reason: int | str | None = None                 # the stop string or token id that matched
    error: str | None = None                             # set when finish_reason == "error"

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    num_cached_tokens: int = 0       # prompt tokens served from the prefix cache
    metrics: dict[str, float] = field(default_factory=dict)  # arrival, scheduled, first_token, finished (monotonic s)
