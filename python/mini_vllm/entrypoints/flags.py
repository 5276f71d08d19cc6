"""The server's flags: `vllm serve`'s names, what each does here, and what we refuse.

Why one table of vLLM's flags: deployments arrive with `vllm serve` command lines (manifests, Slurm
scripts, Helm values). Every flag they use is accepted: those we honour map onto EngineArgs; those
that change nothing for our engine (NOOP_FLAGS) are accepted with one log line saying why; a value we
cannot honour (`--quantization awq`, `--kv-cache-dtype fp8`, `-pp 2`) is refused before anything
loads, with one line and exit status 2. Our own knobs follow, their defaults from environment.py.
"""
from __future__ import annotations

import argparse
import re
import sys
from typing import Any, NoReturn

from mini_vllm.api.limits import DEFAULT_MAX_REQUEST_BYTES
from mini_vllm.engine_args import EngineArgs
from mini_vllm.environment import env_defaults, log_level

_D = EngineArgs(model="")


class UsageError(ValueError):
    """A flag value we cannot honour (the CLI prints one line and exits 2)."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (no usage dump) and exits 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def human_int(text: str) -> int:
    """vLLM's human-readable sizes: 32768, 32k (x1000), 32K (x1024), 1m / 1M."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 8192, 32k, 32K)")
    num, unit = float(m.group(1)), m.group(2)
    mult = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "K": 2**10, "M": 2**20, "G": 2**30}[unit]
    return int(num * mult)


# flag -> why it changes nothing here (logged once at startup when given)
NOOP_FLAGS: dict[str, str] = {
    "trust_remote_code": "we never run code from a model repository",
    "enable_auto_tool_choice": "GPT-OSS tool calls are always parsed from its harmony output",
    "tool_call_parser": "GPT-OSS tool calls are parsed by our harmony parser, whatever parser is named",
    "reasoning_parser": "GPT-OSS reasoning is split off by our harmony parser, whatever parser is named",
    "enable_chunked_prefill": "prefill is always chunked here (by --max-num-batched-tokens)",
    "swap_space": "preempted requests are recomputed, never swapped to CPU memory",
    "disable_log_requests": "requests are not logged unless --enable-log-requests is given",
    "disable_frontend_multiprocessing": "the API server and engine share one process here",
    "distributed_executor_backend": "tensor-parallel ranks are always local processes",
    "max_parallel_loading_workers": "each rank loads its own shard",
    "disable_custom_all_reduce": "all-reduces always go through NCCL (gloo on CPU)",
    "worker_multiproc_method": "tensor-parallel ranks are always spawned",
}
QUANTIZATIONS = (None, "mxfp4")          # GPT-OSS ships MXFP4 experts; nothing else is implemented
KV_CACHE_DTYPES = ("auto", "bfloat16")   # the KV cache is in the model dtype
LOAD_FORMATS = ("auto", "safetensors")


def _vllm_flags(p: argparse.ArgumentParser, positional_model: bool) -> None:
    g = p.add_argument_group("vLLM flags honoured")
    if positional_model:
        g.add_argument("model_tag", nargs="?", default=None, metavar="MODEL",
                       help="local directory, Hugging Face id (org/name) or s3://bucket/prefix (or --model)")
    g.add_argument("--model", default=None, help="the model, as the positional MODEL (default: none)")
    g.add_argument("--host", default="0.0.0.0", help="address to listen on")
    g.add_argument("--port", type=int, default=8000, help="port to listen on")
    g.add_argument("--served-model-name", nargs="+", default=None,
                   help="name(s) clients use; the first is reported (default: the model as given; the directory "
                        "name for a local path)")
    g.add_argument("--tensor-parallel-size", "-tp", type=int, default=_D.tensor_parallel_size,
                   help="GPUs (processes) sharing the model")
    g.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1, help="only 1 is supported")
    g.add_argument("--data-parallel-size", "-dp", type=int, default=1,
                   help="only 1 is supported (run replicas behind a router instead)")
    g.add_argument("--dtype", default=_D.dtype, choices=["auto", "bfloat16", "half", "float16", "float", "float32"],
                   help="weights/activations dtype (auto: bfloat16 on CUDA, float32 on CPU)")
    g.add_argument("--max-model-len", type=human_int, default=_D.max_model_len,
                   help="context length; accepts 32k/32K (default: the model's, capped by the KV cache)")
    g.add_argument("--max-num-seqs", type=int, default=_D.max_num_seqs, help="sequences per engine step")
    g.add_argument("--max-num-batched-tokens", type=human_int, default=_D.max_num_batched_tokens,
                   help="tokens per engine step (the chunked-prefill budget)")
    g.add_argument("--gpu-memory-utilization", type=float, default=_D.gpu_memory_utilization,
                   help="CUDA: fraction of GPU memory for weights + KV cache")
    g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=_D.enable_prefix_caching,
                   help="reuse KV blocks of shared prompt prefixes")
    g.add_argument("--block-size", type=int, default=_D.block_size, help="tokens per KV block")
    g.add_argument("--seed", type=int, default=_D.seed, help="seed of unseeded sampling")
    g.add_argument("--enforce-eager", action="store_true", default=_D.enforce_eager, help="CUDA: no CUDA graphs")
    g.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=_D.async_scheduling,
                   help="launch step n+1 before step n's tokens reach the host (default None: on for one CUDA GPU)")
    g.add_argument("--max-logprobs", type=int, default=_D.max_logprobs,
                   help="largest logprobs/top_logprobs a request may ask for")
    g.add_argument("--kv-cache-dtype", default="auto", help="auto (the model dtype); fp8 is refused")
    g.add_argument("--quantization", "-q", default=None, help="none or mxfp4 (GPT-OSS's own); others are refused")
    g.add_argument("--load-format", default="auto", help="auto or safetensors")
    g.add_argument("--tokenizer", default=None, help="tokenizer directory or id (default: the model's)")
    g.add_argument("--revision", default=None, help="Hugging Face revision (branch, tag or commit) of the model")
    g.add_argument("--tokenizer-revision", default=None, help="Hugging Face revision of --tokenizer")
    g.add_argument("--download-dir", default=None,
                   help="where Hugging Face / S3 downloads go (default: HF_HOME's hub cache; S3: ~/.cache/mini-vllm/s3)")
    g.add_argument("--hf-token", default=None, nargs="?", const=True,
                   help="Hugging Face token (default: HF_TOKEN / HUGGING_FACE_HUB_TOKEN / the hub's stored login)")
    g.add_argument("--generation-config", default="auto",
                   help="auto: sampling defaults from the model's generation_config.json; vllm: none; or a directory")
    g.add_argument("--api-key", default=None,
                   help="require this bearer token (default: $MINI_VLLM_API_KEY or $VLLM_API_KEY; never logged)")
    g.add_argument("--enable-log-requests", action=argparse.BooleanOptionalAction, default=False,
                   help="log one line per request (id, prompt tokens, sampling settings)")
    g.add_argument("--disable-log-stats", action="store_true", default=False,
                   help="no periodic throughput/queue line in the log (default: every 10 s while busy)")
    g.add_argument("--uvicorn-log-level", default=None, choices=["critical", "error", "warning", "info", "debug", "trace"],
                   help="uvicorn's log level (default: --log-level)")
    g.add_argument("--disable-uvicorn-access-log", action="store_true", help="no access-log line per HTTP request")


def _noop_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("vLLM flags accepted that change nothing here (one log line says why)")
    for flag in ("trust_remote_code", "enable_auto_tool_choice", "disable_log_requests",
                 "disable_frontend_multiprocessing", "disable_custom_all_reduce"):
        g.add_argument("--" + flag.replace("_", "-"), action="store_true", default=None, help=NOOP_FLAGS[flag])
    g.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction, default=None,
                   help=NOOP_FLAGS["enable_chunked_prefill"])
    for flag in ("tool_call_parser", "reasoning_parser", "swap_space", "distributed_executor_backend",
                 "max_parallel_loading_workers", "worker_multiproc_method"):
        g.add_argument("--" + flag.replace("_", "-"), default=None, help=NOOP_FLAGS[flag])


def _our_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("mini-vLLM flags (defaults from MINI_VLLM_* variables where noted)")
    g.add_argument("--kv-cache-memory-gb", type=float, default=_D.kv_cache_memory_gb,
                   help="KV cache size in GiB (the CPU knob; overrides --gpu-memory-utilization)")
    g.add_argument("--device", default=_D.device, choices=["auto", "cpu", "cuda"], help="where the model runs")
    g.add_argument("--max-waiting", type=int, default=_D.max_waiting, help="queued requests beyond this get HTTP 429")
    g.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                   help="larger request bodies get HTTP 413")
    g.add_argument("--log-level", default=log_level() or "info", choices=["debug", "info", "warning", "error"],
                   help="log level ($MINI_VLLM_LOG_LEVEL, $VLLM_LOGGING_LEVEL)")
    g.add_argument("--attention-backend", default=_D.attention_backend, choices=["auto", "fa3", "triton"],
                   help="CUDA attention kernel ($MINI_VLLM_ATTENTION)")
    g.add_argument("--fused-ops", action=argparse.BooleanOptionalAction, default=_D.fused_ops,
                   help="CUDA: fused router/rope+KV-write kernels where they pass their self-check ($MINI_VLLM_FUSED_OPS)")
    g.add_argument("--fused-router", action=argparse.BooleanOptionalAction, default=_D.fused_router,
                   help="CUDA: the fused router GEMM + top-k, measured slower ($MINI_VLLM_FUSED_ROUTER)")
    g.add_argument("--moe-configs", default=_D.moe_configs,
                   help="CUDA: MoE tile table, JSON (default: the shipped one; $MINI_VLLM_MOE_CONFIGS)")
    g.add_argument("--ext-dir", default=_D.ext_dir,
                   help="searched first for our CUDA extension modules ($MINI_VLLM_EXT_DIR)")
    g.add_argument("--dequant-cache-mb", type=int, default=_D.dequant_cache_mb,
                   help="CPU: MiB of dequantised expert layers kept ($MINI_VLLM_DEQUANT_CACHE_MB)")
    g.add_argument("--cpu-threads", type=int, default=_D.cpu_threads, help="CPU: torch threads ($MINI_VLLM_CPU_THREADS)")
    g.add_argument("--stream-coalesce", action=argparse.BooleanOptionalAction, default=_D.stream_coalesce,
                   help="merge a lagging stream's queued outputs into one event ($MINI_VLLM_STREAM_COALESCE)")
    g.add_argument("--deliver-in-gpu-wait", action=argparse.BooleanOptionalAction, default=_D.deliver_in_gpu_wait,
                   help="hand outputs to the HTTP side during the next GPU wait ($MINI_VLLM_DELIVER_IN_GPU_WAIT)")
    g.add_argument("--switch-interval-ms", type=float, default=_D.switch_interval_ms,
                   help="GIL switch interval in ms (default: Python's 5; $MINI_VLLM_SWITCH_INTERVAL_MS)")
    g.add_argument("--gc-freeze", action=argparse.BooleanOptionalAction, default=_D.gc_freeze,
                   help="gc.freeze() the start-up heap once loaded ($MINI_VLLM_GC_FREEZE)")
    g.add_argument("--gemv-kernels", action=argparse.BooleanOptionalAction, default=_D.gemv_kernels,
                   help="CUDA: tensor-core MoE GEMVs at 2..8 tokens and the fused MoE sum + norm")
    g.add_argument("--test-fault-prompt", default=None, help=argparse.SUPPRESS)   # tests only (engine/faults.py)


def add_server_flags(p: argparse.ArgumentParser, positional_model: bool = True) -> None:
    """All flags, with MINI_VLLM_* environment values as defaults (raises EnvError on a bad one)."""
    _vllm_flags(p, positional_model)
    _noop_flags(p)
    _our_flags(p)
    p.set_defaults(**env_defaults())


def check_supported(ns: argparse.Namespace) -> list[str]:
    """Refuse what we cannot honour (UsageError, one line); return a note per accepted no-op flag."""
    model = getattr(ns, "model_tag", None) or ns.model
    if not model:
        raise UsageError("no model given: pass MODEL (a directory, a Hugging Face id or s3://...) or --model")
    if getattr(ns, "model_tag", None) and ns.model and ns.model != ns.model_tag:
        raise UsageError(f"two models given: {ns.model_tag!r} and --model {ns.model!r}")
    q = (ns.quantization or "").lower() or None
    if q not in QUANTIZATIONS:
        raise UsageError(f"--quantization {ns.quantization}: not supported; GPT-OSS runs its own MXFP4 weights "
                         "(omit the flag or pass mxfp4)")
    if ns.kv_cache_dtype.lower() not in KV_CACHE_DTYPES:
        raise UsageError(f"--kv-cache-dtype {ns.kv_cache_dtype}: not supported; the KV cache is in the model dtype "
                         "(omit the flag or pass auto)")
    if ns.load_format.lower() not in LOAD_FORMATS:
        raise UsageError(f"--load-format {ns.load_format}: not supported; weights load from safetensors (auto)")
    for flag, value in (("--pipeline-parallel-size", ns.pipeline_parallel_size),
                        ("--data-parallel-size", ns.data_parallel_size)):
        if value != 1:
            raise UsageError(f"{flag} {value}: not supported; use --tensor-parallel-size for several GPUs, "
                             "or replicas behind a router")
    if ns.tensor_parallel_size < 1:
        raise UsageError(f"--tensor-parallel-size {ns.tensor_parallel_size}: must be >= 1")
    if ns.max_logprobs < 0:
        raise UsageError(f"--max-logprobs {ns.max_logprobs}: must be >= 0")
    if ns.switch_interval_ms is not None and not 0 < ns.switch_interval_ms <= 1000:
        raise UsageError(f"--switch-interval-ms {ns.switch_interval_ms}: expected milliseconds in (0, 1000]")
    if ns.test_fault_prompt:
        from mini_vllm.engine.faults import parse_spec
        try:
            parse_spec(ns.test_fault_prompt)
        except ValueError as e:
            raise UsageError(str(e)) from None
    return [f"--{flag.replace('_', '-')} accepted: changes nothing here ({why})"
            for flag, why in NOOP_FLAGS.items() if getattr(ns, flag, None) not in (None, False)]


def given_model(ns: argparse.Namespace) -> str:
    return getattr(ns, "model_tag", None) or ns.model


def namespace_fields(ns: argparse.Namespace) -> dict[str, Any]:
    """The parsed values that are EngineArgs fields (model and served name are resolved by the caller)."""
    from dataclasses import fields
    names = {f.name for f in fields(EngineArgs)} - {"model", "served_model_name"}
    return {k: v for k, v in vars(ns).items() if k in names}
