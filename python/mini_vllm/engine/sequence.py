"""One sample's life in the engine: its tokens, KV blocks, progress, and generation state.

A request with n > 1 becomes n Sequences (samples 0..n-1) sharing a `Request`; the prompt's KV is
shared through prefix caching (samples 1.. wait until sample 0 has filled the prompt's blocks).
Preemption (by recompute) only resets `num_computed_tokens` and the block table: the tokens stay,
so a preempted sequence resumes exactly where it was.
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

from mini_vllm.engine.outputs import TokenLogprob
from mini_vllm.sampling_params import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    seqs: list["Sequence"] = field(default_factory=list)
    arrival: float = field(default_factory=time.monotonic)
    scheduled: float | None = None           # first admitted to a batch (queue time = scheduled - arrival)
    first_token: float | None = None
    finished_at: float | None = None
    num_cached_tokens: int = 0

    @property
    def finished(self) -> bool:
        for s in self.seqs:          # a plain loop: called per request per step, cheaper than all(genexpr)
            if s.status is not Status.FINISHED:
                return False
        return True


class Sequence:
    __slots__ = ("req", "index", "seq_id", "token_ids", "num_prompt_tokens", "block_table", "num_computed_tokens",
                 "num_hashed_blocks", "status", "generator", "decoder", "text", "sent_text_len", "sent_tokens",
                 "logprobs", "sent_logprobs", "finish_reason", "stop_reason", "error", "leader", "max_tokens", "params",
                 "block_row", "matcher", "final_pending")

    def __init__(self, req: Request, index: int, seq_id: int, max_tokens: int):
        self.req, self.index, self.seq_id = req, index, seq_id
        self.token_ids: list[int] = list(req.prompt_token_ids)
        self.num_prompt_tokens = len(req.prompt_token_ids)
        self.block_table: list[int] = []
        self.block_row = -1               # its row in the BlockManager's BlockTableArray (-1: none)
        self.num_computed_tokens = 0      # tokens whose KV is in the cache
        self.num_hashed_blocks = 0        # leading full blocks registered in the prefix cache
        self.status = Status.WAITING
        self.params: SamplingParams = req.params   # a plain attribute: read on every step
        p = req.params
        self.generator: torch.Generator | None = None
        if p.seed is not None and not p.greedy:
            self.generator = torch.Generator().manual_seed(p.seed + index)
        self.decoder = None               # incremental detokeniser, set by the engine
        self.text = ""
        self.sent_text_len = 0
        self.sent_tokens = 0
        self.logprobs: list[TokenLogprob] | None = [] if p.logprobs is not None else None
        self.sent_logprobs = 0
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        self.error: str | None = None
        self.leader: "Sequence | None" = None   # n > 1: wait for this sample to fill the prompt's blocks
        self.max_tokens = max_tokens
        self.matcher = None                 # constrained decoding (structured/matcher.py), set by the engine
        self.final_pending = False        # async scheduling: its last token is sampled, not yet on the host

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    def finish(self, reason: str, stop_reason: int | str | None = None, error: str | None = None) -> None:
        self.status = Status.FINISHED
        self.finish_reason, self.stop_reason, self.error = reason, stop_reason, error
