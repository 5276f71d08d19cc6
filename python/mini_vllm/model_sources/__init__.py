"""Where a model comes from: a local directory, a Hugging Face id, or s3://bucket/prefix -> a local directory.

Why here and not in the engine: the engine loads a directory; fetching it is the entry point's job, done
before the engine starts (and before the server listens), so a pod is not ready until its weights are on
disk and a failed download is a failed start with one line saying why. vLLM accepts the same three forms.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
_HF_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")     # org/name (a path that does not exist is not one)

# What the server reads from a model repository. GPT-OSS repositories also carry `original/` (the same
# weights in OpenAI's layout) and `metal/` (Apple's): 13 GB+ that nothing here reads is never fetched.
ALLOW_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.jinja", "tokenizer*", "*.model")
IGNORE_PATTERNS = ("original/*", "metal/*", "*.pth", "*.bin", "*.pt", "*.msgpack", "*.h5", "*.onnx")
TOKENIZER_PATTERNS = ("tokenizer*", "*.json", "*.txt", "*.model", "*.jinja")


class ModelSourceError(RuntimeError):
    """The model cannot be found or fetched (one line: what, where, and what to do)."""


@dataclass(frozen=True)
class SourceOptions:
    revision: str | None = None          # Hugging Face branch, tag or commit
    download_dir: str | None = None      # HF: the hub cache dir (default HF_HOME's); S3: where objects land
    token: str | bool | None = None      # HF token; True: the hub's stored login; None: none


def kind_of(model: str) -> str:
    """"local" | "s3" | "hf" for a MODEL argument."""
    if model.startswith("s3://"):
        return "s3"
    if not Path(model).expanduser().exists() and _HF_ID.fullmatch(model):
        return "hf"
    return "local"


def resolve(model: str, opts: SourceOptions, patterns: tuple[str, ...] = ALLOW_PATTERNS) -> Path:
    """A local directory holding the model (downloading it first if it is remote)."""
    kind = kind_of(model)
    if kind == "local":
        path = Path(model).expanduser()
        if not path.is_dir():
            raise ModelSourceError(f"model directory {model} does not exist (give a directory with config.json, "
                                   "a Hugging Face id such as openai/gpt-oss-20b, or s3://bucket/prefix)")
        return path
    if kind == "s3":
        from mini_vllm.model_sources.s3 import fetch_s3
        return fetch_s3(model, opts.download_dir, patterns)
    from mini_vllm.model_sources.hf import fetch_hf
    return fetch_hf(model, opts, patterns)


__all__ = ["ALLOW_PATTERNS", "IGNORE_PATTERNS", "TOKENIZER_PATTERNS", "ModelSourceError", "SourceOptions",
           "kind_of", "resolve"]
