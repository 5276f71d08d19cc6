"""TESTS ONLY: make chosen requests fail inside the engine, to check that one failure stays contained.

EngineArgs.test_fault_prompt = "ID,ID,...[@K]" (flag --test-fault-prompt, default from
MINI_VLLM_TEST_FAULT_PROMPT) makes every sequence whose prompt starts with those token ids raise
once it has generated K tokens (default 0), so tests can check that the failing request gets an
error while the others, and the server, carry on. Never set in deployments: the engine logs a warning.
"""
from __future__ import annotations

import logging
from typing import Callable

from mini_vllm.engine.sequence import Sequence

log = logging.getLogger(__name__)


def parse_spec(spec: str) -> tuple[list[int], int]:
    """"ID,ID,...[@K]" -> (marker ids, K); ValueError with the expected form otherwise."""
    marker_s, _, after_s = spec.partition("@")
    try:
        marker = [int(t) for t in marker_s.split(",") if t.strip()]
        after = int(after_s or 0)
    except ValueError:
        marker = []
    if not marker:
        raise ValueError(f"test fault spec {spec!r}: expected 'ID,ID,...[@K]'")
    return marker, after


def fault_hook(spec: str) -> Callable[[Sequence], None]:
    marker, after = parse_spec(spec)
    log.warning("test fault injection is on: requests whose prompt starts with %s fail after %d tokens "
                "(test-only; never set in deployments)", marker, after)

    def hook(seq: Sequence) -> None:
        if seq.req.prompt_token_ids[:len(marker)] == marker and seq.num_output_tokens >= after:
            raise RuntimeError("injected test fault (--test-fault-prompt)")
    return hook
