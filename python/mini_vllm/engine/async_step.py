"""Async scheduling: step n+1 is scheduled and launched before step n's sampled tokens reach the host.

Why: in the synchronous step the GPU idles while the host schedules, builds inputs, then (after the
blocking copy of the sampled ids) detokenises, checks stops and builds outputs - ~20% of a batch-256
decode step on an H200. Here one `step()` call:
  1. schedules and launches step n+1; a token sampled at step n that is not on the host yet is a
     placeholder -(j+1) in its sequence (j: its row in step n's sampled ids), and the runner swaps
     placeholders for step n's ids on the device (`resolve_placeholders`), so the inputs never wait;
  2. samples step n+1 on the device and starts the copy of its ids to the host;
  3. then takes step n's ids (copied long ago; the GPU is busy with n+1 meanwhile) and does the host
     work: tokens in place of placeholders, detokenise, stop checks, prefix-cache registration, outputs.
Outputs therefore come one step later. A sequence that stops at step n was already in step n+1: that
token is dropped (its KV write lands in blocks the sequence frees). A sequence whose placeholder takes it
to max_tokens is not scheduled again (`Sequence.final_pending`).
Used when EngineArgs.async_scheduling allows it (not with tensor parallelism: workers get host inputs).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from mini_vllm.engine.scheduler import ScheduledBatch
from mini_vllm.engine.sequence import Sequence, Status

log = logging.getLogger(__name__)


@dataclass
class PendingStep:
    """A launched step whose sampled ids are still on their way to the host."""

    batch: ScheduledBatch
    sampled: list[Sequence]
    at: list[int]                     # index of each sampled sequence's placeholder in its token_ids
    tokens: torch.Tensor              # int64 [len(sampled)] on the device (read by the next step's inputs)
    logprobs: tuple | None            # the sampler's logprob tensors when a row wants them
    host: torch.Tensor                # the ids being copied to the host
    copied: torch.cuda.Event | None   # when `host` is valid (None on the CPU: it already is)


def drop_placeholders(seq: Sequence) -> None:
    """A sequence leaving the engine (abort, error) keeps only real tokens."""
    ids = seq.token_ids
    while len(ids) > seq.num_prompt_tokens and ids[-1] < 0:
        ids.pop()


def _launch(eng, batch: ScheduledBatch, prev: PendingStep | None, touched: dict) -> PendingStep | None:
    ran = eng._execute(batch, touched, prev.tokens if prev is not None else None)
    if ran is None:
        return None
    inputs, logits = ran
    seqs = batch.seqs
    sampled = seqs if inputs.sample_all else [s for s, r in zip(seqs, inputs.sample_rows) if r >= 0]
    eng._advance(batch, register=False)
    if not sampled:
        return None
    try:
        tokens, lp = eng.sampler.sample(logits, sampled)
    except Exception as e:  # noqa: BLE001
        log.exception("sampling failed")
        for seq in sampled:
            eng._fail(seq, f"sampling failed: {type(e).__name__}: {e}", touched)
        return None
    copied = None
    if tokens.is_cuda:
        host = tokens.to("cpu", non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
    else:
        host = tokens
    at = []
    limit = eng.model_config.max_model_len
    for j, seq in enumerate(sampled):
        ids = seq.token_ids
        at.append(len(ids))
        ids.append(-(j + 1))
        if len(ids) - seq.num_prompt_tokens >= seq.max_tokens or len(ids) >= limit:
            seq.final_pending = True          # this token ends it: nothing more to schedule
    return PendingStep(batch, sampled, at, tokens, lp, host, copied)


def _resolve(eng, p: PendingStep, touched: dict) -> None:
    """Step n's ids are on the host: put them in place of the placeholders and do the per-token work."""
    if p.copied is not None:
        p.copied.synchronize()
    token_list = p.host.tolist()
    try:
        result = eng.sampler.results(token_list, p.logprobs, p.sampled)
    except Exception as e:  # noqa: BLE001
        log.exception("sampling failed")
        for seq in p.sampled:
            eng._fail(seq, f"sampling failed: {type(e).__name__}: {e}", touched)
        return
    eng._accept_all(p.sampled, result.token_ids, result.logprobs, touched, at=p.at)


def step_async(eng) -> list:
    """One pipelined engine step (see the module doc); returns the outputs of the previous launch."""
    touched: dict = {}
    pending: PendingStep | None = eng._pending
    batch = eng.scheduler.schedule()
    launched = _launch(eng, batch, pending, touched) if batch.seqs else None
    if eng.gpu_wait_hook is not None:     # the GPU is busy: hand over the outputs of the last call now
        eng.gpu_wait_hook()
    if pending is not None:
        _resolve(eng, pending, touched)
    if launched is not None:              # every token with KV in the cache is known now: register blocks
        eng._register(launched.batch)
    eng._pending = launched
    return eng._collect(touched)



def drain(eng) -> list:
    """Hand out the launched step's tokens without launching another (the engine turns synchronous,
    e.g. for a request with constrained decoding, whose mask needs every previous token on the host)."""
    touched: dict = {}
    pending, eng._pending = eng._pending, None
    _resolve(eng, pending, touched)
    eng._register(pending.batch)
    return eng._collect(touched)
