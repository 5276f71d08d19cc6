"""RequestOutputs from sequences, built once per touched request per step without O(context) copies.

Why a module of its own: at 256 running requests this runs 256 times a step, and the obvious version
copied each sample's whole output (`token_ids`, `logprobs`) every step - O(output length) per request
per token, the biggest engine cost past a few hundred generated tokens. The cumulative lists are now
sliced from the sequence's append-only lists only when someone reads them (the API reads them once, on
the final output; streaming reads only the deltas). What a reader sees is unchanged: a fresh list
holding exactly the tokens generated up to that output, whenever it is read.
"""
from __future__ import annotations

import dataclasses
import time
from functools import cached_property

from mini_vllm.engine import detokenizer
from mini_vllm.engine.outputs import CompletionOutput, RequestOutput, TokenLogprob
from mini_vllm.engine.sequence import Request

_FIELDS = tuple(f.name for f in dataclasses.fields(CompletionOutput))


class SnapshotOutput(CompletionOutput):
    """A CompletionOutput whose cumulative lists are materialised on first read.

    `token_ids` / `logprobs` are `cached_property`s over (source list, end): the source is only ever
    appended to (tokens are kept across preemption, never truncated), so `source[start:end]` is the same
    whenever it is taken. Assigning either field (the dataclass __init__ does, e.g. under
    `dataclasses.replace`) simply stores the value. Equality is by field values against any
    CompletionOutput; pickling/copying yields a plain CompletionOutput.
    """

    _ids_src: list[int]
    _ids_from: int
    _ids_to: int
    _lp_src: list[TokenLogprob] | None
    _lp_to: int

    @classmethod
    def build(cls, index: int, text: str, ids: list[int], ids_from: int, text_delta: str,
              token_ids_delta: list[int], lps: list[TokenLogprob] | None,
              logprobs_delta: list[TokenLogprob] | None, finish_reason: str | None,
              stop_reason: int | str | None, error: str | None) -> "SnapshotOutput":
        co = cls.__new__(cls)
        d = co.__dict__
        d["index"], d["text"], d["text_delta"], d["token_ids_delta"] = index, text, text_delta, token_ids_delta
        d["logprobs_delta"], d["finish_reason"], d["stop_reason"], d["error"] = (
            logprobs_delta, finish_reason, stop_reason, error)
        d["_ids_src"], d["_ids_from"], d["_ids_to"] = ids, ids_from, len(ids)
        d["_lp_src"], d["_lp_to"] = lps, (len(lps) if lps is not None else 0)
        return co

    @cached_property
    def token_ids(self) -> list[int]:  # type: ignore[override]
        return self._ids_src[self._ids_from:self._ids_to]

    @cached_property
    def logprobs(self) -> list[TokenLogprob] | None:  # type: ignore[override]
        src = self._lp_src
        return None if src is None else src[:self._lp_to]

    def _values(self) -> tuple:
        return tuple(getattr(self, n) for n in _FIELDS)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompletionOutput):
            return NotImplemented
        return self._values() == tuple(getattr(other, n) for n in _FIELDS)

    __hash__ = None  # type: ignore[assignment]  - mutable, like the dataclass

    def __reduce__(self):
        return CompletionOutput, self._values()


def request_output(req: Request) -> RequestOutput:
    """The request's state now, and what is new since its previous output (advances the sent marks)."""
    outs = []
    for seq in req.seqs:
        text = seq.text
        vis = detokenizer.visible_text_len(seq)
        ids = seq.token_ids
        p0 = seq.num_prompt_tokens
        lps = seq.logprobs
        lp_delta = None
        if lps is not None:
            lp_delta = lps[seq.sent_logprobs:]
            seq.sent_logprobs = len(lps)
        outs.append(SnapshotOutput.build(seq.index, text[:vis], ids, p0, text[seq.sent_text_len:vis],
                                         ids[p0 + seq.sent_tokens:], lps, lp_delta, seq.finish_reason,
                                         seq.stop_reason, seq.error))
        seq.sent_text_len, seq.sent_tokens = vis, len(ids) - p0
    finished = req.finished
    if finished and req.finished_at is None:
        req.finished_at = time.monotonic()
    metrics = {"arrival": req.arrival}
    if req.scheduled is not None:
        metrics["scheduled"] = req.scheduled
    if req.first_token is not None:
        metrics["first_token"] = req.first_token
    if req.finished_at is not None:
        metrics["finished"] = req.finished_at
    return RequestOutput(req.request_id, req.prompt_token_ids, outs, finished, req.num_cached_tokens, metrics)
