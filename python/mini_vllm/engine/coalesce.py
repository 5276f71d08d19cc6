"""Merging a request's queued RequestOutputs into one, so a stream that falls behind catches up.

Why: the engine thread produces one RequestOutput per request per step; when the asyncio side cannot
keep up (hundreds of streams, each output costing an SSE event and a socket write), outputs pile up
in the request's queue and every one of them would still cost a full event. Merging what is queued
makes the API self-balancing: the further behind, the more tokens one event carries, and the per-step
cost on the event loop stops growing with the backlog.

The merge is exact: deltas (text_delta, token_ids_delta, logprobs_delta) are concatenated in order,
everything else (cumulative text/token_ids/logprobs, finish_reason, stop_reason, error, finished,
metrics) comes from the newest output that has the sample. Inputs are never mutated.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from mini_vllm.engine.outputs import CompletionOutput, RequestOutput

__all__ = ["merge_outputs"]


def merge_outputs(items: Sequence[RequestOutput]) -> RequestOutput:
    """One RequestOutput equivalent to `items` (oldest first, all of one request) streamed in order."""
    if not items:
        raise ValueError("merge_outputs needs at least one RequestOutput")
    newest = items[-1]
    if len(items) == 1:
        return newest
    rid = newest.request_id
    if any(o.request_id != rid for o in items):
        raise ValueError("merge_outputs: the outputs belong to different requests")
    parts: dict[int, list[CompletionOutput]] = {}        # sample index -> its outputs, oldest first
    for out in items:
        for co in out.outputs:
            parts.setdefault(co.index, []).append(co)
    merged = [_merge_sample(cos) for cos in parts.values()]
    return dataclasses.replace(newest, outputs=merged)


def _merge_sample(cos: list[CompletionOutput]) -> CompletionOutput:
    last = cos[-1]
    if len(cos) == 1:
        return last
    token_ids_delta = [t for co in cos for t in co.token_ids_delta]
    lps = [co.logprobs_delta for co in cos]
    logprobs_delta = None if all(lp is None for lp in lps) else [x for lp in lps for x in (lp or ())]
    return dataclasses.replace(last, text_delta="".join(co.text_delta for co in cos),
                               token_ids_delta=token_ids_delta, logprobs_delta=logprobs_delta)
