"""Parsed flags -> EngineArgs -> a running server (uvicorn + the API app + the engine, loaded in the background).

Shared by `mini-vllm serve` (cli.py) and `python -m mini_vllm.entrypoints.openai.api_server`, so both
accept the same flags and behave the same. A flag value we cannot honour ends the process with one
line and exit status 2 before anything loads; flags that change nothing are named once in the log.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mini_vllm.api.engine_client import EngineClient
from mini_vllm.engine_args import EngineArgs
from mini_vllm.entrypoints.flags import UsageError, check_supported, given_model, namespace_fields
from mini_vllm.environment import api_key as env_api_key
from mini_vllm.environment import EnvError, hf_token, log_stats_interval
from mini_vllm.model_sources import TOKENIZER_PATTERNS, ModelSourceError, SourceOptions, kind_of, resolve

if TYPE_CHECKING:
    from mini_vllm.api.state import ServerState

log = logging.getLogger("mini_vllm")


def served_names(ns: argparse.Namespace) -> list[str]:
    """--served-model-name values, else the model as given - a Hugging Face id or s3:// URI as vLLM
    does; a local path by its directory's name (on purpose: clients and dashboards get a short name,
    not a filesystem path; requests naming the path as given are accepted too, see ServerState)."""
    if ns.served_model_name:
        return list(ns.served_model_name)
    model = given_model(ns)
    return [Path(model).expanduser().resolve().name] if kind_of(model) == "local" else [model]


def engine_args(ns: argparse.Namespace, model_dir: str | None = None, tokenizer_dir: str | None = None) -> EngineArgs:
    """EngineArgs from parsed flags; `model_dir`/`tokenizer_dir`: where they were fetched to (default: as given)."""
    names = served_names(ns)
    args = EngineArgs(model=model_dir or given_model(ns), served_model_name=names[0], **namespace_fields(ns))
    if tokenizer_dir:
        args.tokenizer = tokenizer_dir
    if args.dtype == "half":
        args.dtype = "float16"
    elif args.dtype == "float":
        args.dtype = "float32"
    return args


def api_key(ns: argparse.Namespace) -> str | None:
    return ns.api_key or env_api_key()


def fetch_model(ns: argparse.Namespace) -> tuple[str, str | None]:
    """The model's (and --tokenizer's) local directories, downloaded first when remote (ModelSourceError)."""
    token = ns.hf_token if ns.hf_token is not None else hf_token()
    opts = SourceOptions(revision=ns.revision, download_dir=ns.download_dir, token=token)
    model_dir = resolve(given_model(ns), opts)
    tok_dir = None
    if ns.tokenizer:
        tok_opts = SourceOptions(revision=ns.tokenizer_revision, download_dir=ns.download_dir, token=token)
        tok_dir = str(resolve(ns.tokenizer, tok_opts, TOKENIZER_PATTERNS))
    return str(model_dir), tok_dir


def fetched_engine_args(ns: argparse.Namespace, prog: str) -> EngineArgs:
    """EngineArgs for a model fetched to a local directory; a fetch failure exits 1 with one line."""
    try:
        model_dir, tok_dir = fetch_model(ns)
    except ModelSourceError as e:
        print(f"{prog}: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    return engine_args(ns, model_dir, tok_dir)


# generation_config.json keys that become defaults for what a request leaves unset (as vLLM maps them)
GENERATION_DEFAULTS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                       "max_new_tokens": "max_tokens"}


def sampling_defaults(source: str, model_dir: str) -> dict[str, Any]:
    """--generation-config: auto (the model's generation_config.json), vllm (none), or a directory."""
    if source == "vllm":
        return {}
    path = Path(model_dir if source == "auto" else source) / "generation_config.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        if source != "auto":
            raise UsageError(f"--generation-config {source}: no generation_config.json there") from None
        return {}
    except ValueError as e:
        raise UsageError(f"{path}: not valid JSON ({e})") from None
    found = {ours: doc[theirs] for theirs, ours in GENERATION_DEFAULTS.items() if doc.get(theirs) is not None}
    if found:
        log.info("default sampling settings from %s (a request's own values win): %s", path, found)
    return found


def server_state(ns: argparse.Namespace, args: EngineArgs, key: str | None = None) -> "ServerState":
    """The API's shared state, the model named as clients will name it."""
    from mini_vllm.api.generation import log_requests
    from mini_vllm.api.state import ServerState

    names = served_names(ns)
    hidden = (given_model(ns),) if not ns.served_model_name and given_model(ns) != names[0] else ()
    log_requests.enabled = bool(ns.enable_log_requests)
    return ServerState(model_name=names[0], aliases=tuple(names[1:]), also_accepted=hidden, api_key=key,
                       switch_interval_ms=args.switch_interval_ms, gc_freeze=args.gc_freeze,
                       max_logprobs=args.max_logprobs, sampling_defaults=sampling_defaults(ns.generation_config, args.model),
                       log_stats_interval_s=None if ns.disable_log_stats else log_stats_interval())


def load_engine(args: EngineArgs) -> EngineClient:
    """Build and start the engine (runs in the loader thread; heavy imports happen here, not at startup)."""
    from mini_vllm.engine.async_engine import AsyncEngine

    engine = AsyncEngine.from_args(args)
    engine.start()
    return engine


def fail(prog: str, message: str) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve(ns: argparse.Namespace, prog: str = "mini-vllm serve") -> None:
    """Load the model, then listen (a model that cannot load exits 1 with one line and never opens the port)."""
    import uvicorn

    from mini_vllm.api.app import build_app, load_model

    try:
        notes = check_supported(ns)
    except UsageError as e:
        fail(prog, str(e))
    for note in notes:
        log.info("%s", note)
    args = fetched_engine_args(ns, prog)
    key = api_key(ns)
    try:
        state = server_state(ns, args, key)
    except (UsageError, EnvError) as e:
        fail(prog, str(e))
    log.info("serving %s as %r on %s:%d; engine args %s; api key %s", args.model, args.served_model_name,
             ns.host, ns.port, dataclasses.asdict(args), "required" if key else "not set")
    try:
        load_model(state, lambda: load_engine(args))
    except Exception as e:  # noqa: BLE001 - any load failure is a failed start: one line, non-zero exit
        reason = str(e).splitlines()[0] if str(e) else ""
        print(f"{prog}: model failed to load from {args.model}: {type(e).__name__}: {reason}",
              file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    try:
        uvicorn.run(build_app(state, ns.max_request_bytes), host=ns.host, port=ns.port,
                    log_level=ns.uvicorn_log_level or ns.log_level, access_log=not ns.disable_uvicorn_access_log,
                    timeout_graceful_shutdown=5)
    finally:
        state.engine.shutdown()
