"""`mini-vllm serve MODEL_DIR [flags]`: the OpenAI-compatible server, with `vllm serve`'s flag names.

Flags map one-to-one onto EngineArgs (the engine's contract), so deployment manifests written for
vLLM need only the command changed. The API key comes from --api-key or MINI_VLLM_API_KEY /
VLLM_API_KEY and is never logged. The model loads first, the server listens after: a model that cannot
load exits non-zero with one line saying why, and never opens the port.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from mini_vllm.api.limits import DEFAULT_MAX_REQUEST_BYTES
from mini_vllm.engine_args import EngineArgs

log = logging.getLogger("mini_vllm")
_DEFAULTS = EngineArgs(model="")


def _add_serve_flags(p: argparse.ArgumentParser) -> None:
    d = _DEFAULTS
    p.add_argument("model", help="model directory (config.json, safetensors, tokenizer.json)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", default=None, help="name clients use (default: the directory's name)")
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=d.tensor_parallel_size)
    p.add_argument("--max-model-len", type=int, default=d.max_model_len)
    p.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs)
    p.add_argument("--max-num-batched-tokens", type=int, default=d.max_num_batched_tokens)
    p.add_argument("--gpu-memory-utilization", type=float, default=d.gpu_memory_utilization)
    p.add_argument("--kv-cache-memory-gb", type=float, default=d.kv_cache_memory_gb,
                   help="KV cache size in GiB (the CPU knob; overrides --gpu-memory-utilization)")
    p.add_argument("--block-size", type=int, default=d.block_size)
    p.add_argument("--dtype", default=d.dtype, choices=["auto", "bfloat16", "float16", "float32"])
    p.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda"])
    p.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=d.enable_prefix_caching)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--max-waiting", type=int, default=d.max_waiting, help="queued requests beyond this get HTTP 429")
    p.add_argument("--enforce-eager", action="store_true", default=d.enforce_eager)
    p.add_argument("--api-key", default=None, help="require this bearer token (or env MINI_VLLM_API_KEY / VLLM_API_KEY)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--disable-uvicorn-access-log", action="store_true")
    p.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                   help=f"larger request bodies get HTTP 413 (default {DEFAULT_MAX_REQUEST_BYTES})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mini-vllm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve_flags(sub.add_parser("serve", help="run the OpenAI-compatible server"))
    return parser.parse_args(argv)


def engine_args(ns: argparse.Namespace) -> EngineArgs:
    names = {f.name for f in dataclasses.fields(EngineArgs)}
    args = EngineArgs(**{k: v for k, v in vars(ns).items() if k in names})
    args.served_model_name = ns.served_model_name or Path(ns.model).resolve().name
    return args


def api_key(ns: argparse.Namespace) -> str | None:
    return ns.api_key or os.environ.get("MINI_VLLM_API_KEY") or os.environ.get("VLLM_API_KEY") or None


# TEST ONLY: "ID,ID,...[@K]" makes every sequence whose prompt starts with those token ids fail inside
# the engine once it has generated K tokens (default 0), so tests can check that one failing request
# gets an error while the others, and the server, carry on. Never set in deployments.
TEST_FAULT_ENV = "MINI_VLLM_TEST_FAULT_PROMPT"


def _test_fault_hook(spec: str):
    marker_s, _, after_s = spec.partition("@")
    marker = [int(t) for t in marker_s.split(",") if t.strip()]
    after = int(after_s or 0)
    if not marker:
        raise ValueError(f"{TEST_FAULT_ENV}={spec!r}: expected 'ID,ID,...[@K]'")

    def hook(seq) -> None:
        if seq.req.prompt_token_ids[:len(marker)] == marker and seq.num_output_tokens >= after:
            raise RuntimeError(f"injected test fault ({TEST_FAULT_ENV})")
    return hook


def load_engine(args: EngineArgs):
    """Build and start the engine (runs in the loader thread; heavy imports happen here, not at startup)."""
    from mini_vllm.engine.async_engine import AsyncEngine

    engine = AsyncEngine.from_args(args)
    spec = os.environ.get(TEST_FAULT_ENV)
    if spec:
        log.warning("%s is set: requests whose prompt starts with %s will fail (test-only fault injection)",
                    TEST_FAULT_ENV, spec)
        engine.engine.fault_hook = _test_fault_hook(spec)
    engine.start()
    return engine


def serve(ns: argparse.Namespace) -> None:
    import uvicorn

    from mini_vllm.api.app import build_app, load_model
    from mini_vllm.api.state import ServerState

    args = engine_args(ns)
    key = api_key(ns)
    log.info("serving %s as %r on %s:%d; engine args %s; api key %s", args.model, args.served_model_name,
             ns.host, ns.port, dataclasses.asdict(args), "required" if key else "not set")
    state = ServerState(model_name=args.served_model_name, api_key=key)
    try:
        load_model(state, lambda: load_engine(args))
    except Exception as e:  # noqa: BLE001 - any load failure is a failed start: one line, non-zero exit
        reason = str(e).splitlines()[0] if str(e) else ""
        print(f"mini-vllm serve: model failed to load from {args.model}: {type(e).__name__}: {reason}",
              file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    try:
        uvicorn.run(build_app(state, ns.max_request_bytes), host=ns.host, port=ns.port, log_level=ns.log_level,
                    access_log=not ns.disable_uvicorn_access_log, timeout_graceful_shutdown=5)
    finally:
        state.engine.shutdown()


def main(argv: list[str] | None = None) -> None:
    ns = parse_args(argv)
    logging.basicConfig(level=getattr(logging, ns.log_level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if ns.command == "serve":
        serve(ns)


if __name__ == "__main__":
    main()
