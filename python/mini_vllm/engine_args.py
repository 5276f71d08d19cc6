"""Engine settings, one field per `mini-vllm serve` flag (named as in `vllm serve` where vLLM has one).

Shared by the CLI (which parses flags into it) and the engine (which sizes itself from it). Every
knob the server honours is a field here, passed down explicitly: nothing below the CLI reads the
environment (`MINI_VLLM_*` variables are only the CLI's defaults, read in environment.py).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineArgs:
    model: str
    served_model_name: str | None = None      # default: the model as given (directory name for a local path)
    tokenizer: str | None = None              # default: the model directory
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
    max_logprobs: int = 20                    # largest logprobs / top_logprobs a request may ask for

    # ---- implementation knobs (A/B runs, deployment paths); CLI defaults from MINI_VLLM_* ----------
    attention_backend: str = "auto"           # CUDA attention: auto | fa3 | triton
    fused_ops: bool = True                    # CUDA: fused router / rope+KV-write kernels where they self-check
    fused_router: bool = False                # CUDA: the fused router GEMM + top-k (measured slower: opt-in)
    moe_configs: str | None = None            # CUDA: MoE tile table (JSON; default: the one shipped)
    ext_dir: str | None = None                # where our CUDA extension modules are (searched first)
    dequant_cache_mb: int = 64                # CPU: budget for keeping dequantised expert layers (0: off)
    cpu_threads: int = 1                      # CPU: torch intra-op threads
    stream_coalesce: bool = True              # merge a lagging stream's queued outputs into one event
    deliver_in_gpu_wait: bool = True          # hand a step's outputs to the event loop during the next GPU wait
    switch_interval_ms: float | None = None   # the server process's GIL switch interval (None: Python's 5 ms)
    gc_freeze: bool = True                    # gc.freeze() the start-up heap once the model is loaded
    gemv_kernels: bool = True                 # CUDA: our MoE GEMVs at 2..8 tokens + fused MoE sum/norm (False: Triton)
    async_scheduling: bool | None = None      # schedule step n+1 before step n's tokens reach the host
                                              # (None: on for one CUDA device; never with tensor parallelism)
    test_fault_prompt: str | None = None      # TESTS ONLY: "ID,ID,...[@K]" fails matching requests (faults.py)
