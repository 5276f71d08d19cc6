"""The one place the server reads its environment: `MINI_VLLM_*` knobs as the CLI's flag defaults.

Why: knobs read deep inside the engine (an `os.environ.get` in a kernel selector) cannot be seen,
tested or logged as a whole, and a typo silently changes nothing. Here each variable maps onto an
EngineArgs field; the CLI uses `env_defaults()` as its defaults (a flag given on the command line
wins), so the startup log shows every value in force. Benches that build an engine in-process call
`env_defaults()` too. A value that does not parse is refused with one line naming the variable.
Secrets (the API key) are read here as well but never become a flag default (help would show them).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class EnvError(ValueError):
    """A MINI_VLLM_* variable holds a value the server cannot use."""


def _bool(raw: str) -> bool:
    v = raw.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError("expected 1/0 (or true/false)")


def _positive_ms(raw: str) -> float:
    ms = float(raw)
    if not 0 < ms <= 1000:
        raise ValueError("expected milliseconds in (0, 1000]")
    return ms


def _non_negative_int(raw: str) -> int:
    n = int(raw)
    if n < 0:
        raise ValueError("expected an integer >= 0")
    return n


def _positive_int(raw: str) -> int:
    n = int(raw)
    if n < 1:
        raise ValueError("expected an integer >= 1")
    return n


def _text(raw: str) -> str:
    return raw.strip()


@dataclass(frozen=True)
class Knob:
    var: str                          # environment variable
    field: str                        # EngineArgs field it sets (the CLI flag is --field-with-dashes)
    parse: Callable[[str], Any]


KNOBS: tuple[Knob, ...] = (
    Knob("MINI_VLLM_ATTENTION", "attention_backend", _text),
    Knob("MINI_VLLM_FUSED_OPS", "fused_ops", _bool),
    Knob("MINI_VLLM_FUSED_ROUTER", "fused_router", _bool),
    Knob("MINI_VLLM_MOE_CONFIGS", "moe_configs", _text),
    Knob("MINI_VLLM_EXT_DIR", "ext_dir", _text),
    Knob("MINI_VLLM_DEQUANT_CACHE_MB", "dequant_cache_mb", _non_negative_int),
    Knob("MINI_VLLM_CPU_THREADS", "cpu_threads", _positive_int),
    Knob("MINI_VLLM_STREAM_COALESCE", "stream_coalesce", _bool),
    Knob("MINI_VLLM_DELIVER_IN_GPU_WAIT", "deliver_in_gpu_wait", _bool),
    Knob("MINI_VLLM_SWITCH_INTERVAL_MS", "switch_interval_ms", _positive_ms),
    Knob("MINI_VLLM_GC_FREEZE", "gc_freeze", _bool),
    Knob("MINI_VLLM_TEST_FAULT_PROMPT", "test_fault_prompt", _text),
)
API_KEY_VARS = ("MINI_VLLM_API_KEY", "VLLM_API_KEY")
HF_TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")      # as huggingface_hub reads them, HF_TOKEN first
LOG_LEVEL_VARS = ("MINI_VLLM_LOG_LEVEL", "VLLM_LOGGING_LEVEL")


def env_defaults(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """EngineArgs field -> value for every knob set (and non-empty) in the environment."""
    environ = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for k in KNOBS:
        raw = environ.get(k.var, "")
        if not raw.strip():
            continue
        try:
            out[k.field] = k.parse(raw)
        except ValueError as e:
            msg = str(e) if "expected" in str(e) else "not a valid value"
            raise EnvError(f"{k.var}={raw!r}: {msg} (or unset it; the flag is --{k.field.replace('_', '-')})") from None
    return out


def api_key(environ: Mapping[str, str] | None = None) -> str | None:
    environ = os.environ if environ is None else environ
    return next((environ[v] for v in API_KEY_VARS if environ.get(v)), None)


def hf_token(environ: Mapping[str, str] | None = None) -> str | None:
    environ = os.environ if environ is None else environ
    return next((environ[v].strip() for v in HF_TOKEN_VARS if environ.get(v, "").strip()), None)


def log_stats_interval(environ: Mapping[str, str] | None = None) -> float:
    """Seconds between the periodic stats lines: VLLM_LOG_STATS_INTERVAL as vLLM reads it (default 10)."""
    environ = os.environ if environ is None else environ
    raw = environ.get("VLLM_LOG_STATS_INTERVAL", "").strip()
    try:
        value = float(raw) if raw else 10.0
    except ValueError:
        raise EnvError(f"VLLM_LOG_STATS_INTERVAL={raw!r}: expected seconds (or unset it)") from None
    if value <= 0:
        raise EnvError(f"VLLM_LOG_STATS_INTERVAL={raw!r}: expected seconds > 0 (or unset it)")
    return value


def log_level(environ: Mapping[str, str] | None = None) -> str | None:
    """MINI_VLLM_LOG_LEVEL, else vLLM's VLLM_LOGGING_LEVEL (lower-cased), if set."""
    environ = os.environ if environ is None else environ
    return next((environ[v].strip().lower() for v in LOG_LEVEL_VARS if environ.get(v, "").strip()), None)
