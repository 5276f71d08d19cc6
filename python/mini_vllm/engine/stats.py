"""Engine-wide numbers the API exports: EngineStats (for /metrics) and ModelInfo (`model_config`).

Plain dataclasses so the API layer can read them without knowing the engine's internals.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path

from mini_vllm.engine_args import EngineArgs
from mini_vllm.model.config import GptOssConfig
from mini_vllm.model.tokenizer import Tokenizer


@dataclass
class EngineStats:
    num_requests_running: int = 0
    num_requests_waiting: int = 0
    kv_cache_usage: float = 0.0          # 0..1
    prefix_cache_queries: int = 0        # tokens, cumulative
    prefix_cache_hits: int = 0           # tokens, cumulative
    num_preemptions: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    # tokens per engine step (vllm:iteration_tokens_total): bucket bounds, counts per bucket (+Inf last), sum
    iteration_token_buckets: tuple[int, ...] = ()
    iteration_token_counts: tuple[int, ...] = ()
    iteration_tokens_sum: int = 0


def step_token_buckets(max_num_batched_tokens: int) -> tuple[int, ...]:
    """1, 8, 16, 32, ... up to the step budget (vLLM buckets by its CUDA-graph sizes and the budget)."""
    out, b = [1], 8
    while b < max_num_batched_tokens:
        out.append(b)
        b *= 2
    return tuple(out + [max_num_batched_tokens])


class StepTokens:
    """Counts engine steps by how many tokens they ran (one bisect per step)."""

    def __init__(self, max_num_batched_tokens: int) -> None:
        self.buckets = step_token_buckets(max_num_batched_tokens)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0

    def observe(self, tokens: int) -> None:
        self.counts[bisect.bisect_left(self.buckets, tokens)] += 1
        self.sum += tokens


@dataclass
class ModelInfo:
    served_model_name: str
    model: str
    max_model_len: int
    vocab_size: int
    num_kv_blocks: int
    block_size: int
    tensor_parallel_size: int
    hf_config: GptOssConfig

    @classmethod
    def build(cls, args: EngineArgs, cfg: GptOssConfig, tok: Tokenizer, num_blocks: int) -> "ModelInfo":
        capacity = num_blocks * args.block_size
        limit = min(cfg.max_position_embeddings, capacity)
        if args.max_model_len is not None:
            if args.max_model_len > cfg.max_position_embeddings:
                raise ValueError(f"max_model_len {args.max_model_len} exceeds the model's "
                                 f"max_position_embeddings {cfg.max_position_embeddings}")
            if args.max_model_len > capacity:
                raise ValueError(f"max_model_len {args.max_model_len} does not fit the KV cache ({capacity} "
                                 "tokens): raise kv_cache_memory_gb / gpu_memory_utilization or lower it")
            limit = args.max_model_len
        name = args.served_model_name or Path(args.model).resolve().name
        return cls(name, args.model, limit, cfg.vocab_size, num_blocks, args.block_size,
                   args.tensor_parallel_size, cfg)
