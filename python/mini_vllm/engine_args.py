"""Engine settings, one field per `mini-vllm serve` flag (named as in `vllm serve`).

Shared by the CLI (which parses flags into it) and the engine (which sizes itself from it).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineArgs:
    model: str
    served_model_name: str | None = None      # default: the model directory's name
    tensor_parallel_size: int = 1
    max_model_len: int | None = None          # default: the model's max_position_embeddings, capped by KV
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192        # per engine step (chunked prefill budget)
    gpu_memory_utilization: float = 0.90      # CUDA: fraction of GPU memory for weights + KV cache
    kv_cache_memory_gb: float | None = None   # explicit KV cache size (the CPU knob; overrides the above)
    block_size: int = 16
    dtype: str = "auto"                       # auto | bfloat16 | float16 | float32 (auto: bf16 on CUDA, fp32 on CPU)
    device: str = "auto"                      # auto | cpu | cuda
    enable_prefix_caching: bool = True
    seed: int = 0
    max_waiting: int = 1024                   # queued requests beyond this are refused (HTTP 429)
    enforce_eager: bool = False               # CUDA: no CUDA graphs
