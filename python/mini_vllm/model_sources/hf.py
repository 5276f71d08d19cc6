"""Hugging Face ids through `huggingface_hub.snapshot_download`, as vLLM fetches them.

Everything the hub client honours applies unchanged: HF_HOME (or --download-dir as the cache dir),
HF_ENDPOINT (a mirror), HF_HUB_OFFLINE=1 (the cache only), the token (--hf-token, HF_TOKEN,
HUGGING_FACE_HUB_TOKEN), resumable downloads (an interrupted file continues from where it stopped, by
HTTP Range), progress bars on the console. A completed snapshot in the cache is reused: a restarted pod
whose cache sits on a persistent volume fetches only metadata, and none at all when the hub is unreachable
(the hub client then falls back to the cached snapshot of that revision).
"""
from __future__ import annotations

import logging
from pathlib import Path

from mini_vllm.model_sources import IGNORE_PATTERNS, ModelSourceError, SourceOptions

log = logging.getLogger(__name__)


def fetch_hf(repo_id: str, opts: SourceOptions, patterns: tuple[str, ...]) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                            RepositoryNotFoundError, RevisionNotFoundError)
    except ImportError:
        raise ModelSourceError(f"{repo_id} looks like a Hugging Face id, but huggingface_hub is not installed "
                               "(pip install huggingface_hub), or give a local directory") from None
    where = opts.download_dir or "the Hugging Face cache (HF_HOME)"
    log.info("fetching %s (revision %s) into %s; token %s", repo_id, opts.revision or "main", where,
             "set" if opts.token else "not set")
    try:
        path = snapshot_download(repo_id, revision=opts.revision, cache_dir=opts.download_dir, token=opts.token,
                                 allow_patterns=list(patterns), ignore_patterns=list(IGNORE_PATTERNS))
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise ModelSourceError(f"{repo_id}: not found or not accessible on the hub ({_first_line(e)}); check the "
                               "id and the token (--hf-token, HF_TOKEN)") from None
    except RevisionNotFoundError as e:
        raise ModelSourceError(f"{repo_id}: revision {opts.revision!r} not found ({_first_line(e)})") from None
    except LocalEntryNotFoundError as e:
        raise ModelSourceError(f"{repo_id}: not in the cache at {where} and the hub cannot be used "
                               f"({_first_line(e)}); unset HF_HUB_OFFLINE or fill the cache first") from None
    except HfHubHTTPError as e:
        raise ModelSourceError(f"{repo_id}: download failed ({_first_line(e)})") from None
    except OSError as e:
        raise ModelSourceError(f"{repo_id}: cannot write to {where} ({e})") from None
    log.info("model %s is at %s", repo_id, path)
    return Path(path)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
