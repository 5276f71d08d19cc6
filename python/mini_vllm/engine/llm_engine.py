"""The synchronous engine: requests in, one batched model step at a time, RequestOutputs out.

step() = schedule -> run the model -> sample -> detokenise/stop -> outputs. Everything per sequence
after the model call is guarded: an exception there fails that request alone (finish_reason
"error"), and a failing model call fails the requests of that batch, never the engine.
"""
from __future__ import annotations

import itertools
import logging
import time
import traceback
from typing import Callable

import torch

from mini_vllm.engine import async_step, detokenizer
from mini_vllm.engine.block_manager import BlockManager
from mini_vllm.engine.faults import fault_hook
from mini_vllm.engine.model_runner import ModelRunner, build_step_inputs
from mini_vllm.engine.output_builder import request_output
from mini_vllm.engine.outputs import RequestOutput, TokenLogprob
from mini_vllm.engine.sampler import Sampler
from mini_vllm.engine.scheduler import Scheduler
from mini_vllm.engine.sequence import Request, Sequence, Status
from mini_vllm.engine.stats import EngineStats, ModelInfo, StepTokens
from mini_vllm.engine_args import EngineArgs
from mini_vllm.model.config import GptOssConfig
from mini_vllm.model.tokenizer import Tokenizer
from mini_vllm.sampling_params import SamplingParams

log = logging.getLogger(__name__)


class LLMEngine:
    # Called once per step after the forward is enqueued and before the first blocking copy back (the
    # sampler's): AsyncEngine sets it to deliver the previous step's outputs while the GPU works.
    gpu_wait_hook: Callable[[], None] | None = None

    def __init__(self, args: EngineArgs, runner: ModelRunner | None = None, tokenizer: Tokenizer | None = None):
        self.args = args
        self.cfg = runner.cfg if runner is not None else GptOssConfig.from_pretrained(args.model)
        self.tokenizer = tokenizer or Tokenizer.from_pretrained(args.tokenizer or args.model)
        self.runner = runner or ModelRunner(args, self.cfg)
        self.model_config = ModelInfo.build(args, self.cfg, self.tokenizer, self.runner.num_blocks)
        self.eos_ids = frozenset(self.tokenizer.eos_token_ids or self.cfg.eos_token_id)
        self.blocks = BlockManager(self.runner.num_blocks, args.block_size, args.enable_prefix_caching,
                                   max_blocks_per_seq=-(-self.model_config.max_model_len // args.block_size))
        self.scheduler = Scheduler(self.blocks, args.max_num_seqs, args.max_num_batched_tokens)
        self.sampler = Sampler(args.seed)
        self.requests: dict[str, Request] = {}
        self._seq_ids = itertools.count()
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.step_tokens = StepTokens(args.max_num_batched_tokens)
        # tests: raise to fail one sequence (engine/faults.py)
        self.fault_hook: Callable[[Sequence], None] | None = fault_hook(args.test_fault_prompt) \
            if args.test_fault_prompt else None
        # async scheduling (engine/async_step.py): auto = on for a single CUDA device; a step with
        # constrained decoding runs synchronously (its mask needs the previous token on the host)
        want = args.async_scheduling
        single = getattr(self.runner, "model", None) is None or self.runner.model.tp_size == 1
        on_cuda = getattr(self.runner, "device", torch.device("cpu")).type == "cuda"
        self.async_scheduling = bool(single and (on_cuda if want is None else want))
        self._pending = None             # the launched step whose tokens are not on the host yet
        self._grammar_requests: set[str] = set()

    # ---- requests ------------------------------------------------------------------------------
    def validate(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Raise ValueError for a request the engine cannot serve (the API maps it to 400)."""
        params.validate()
        if params.logprobs is not None and params.logprobs > self.args.max_logprobs:
            raise ValueError(f"logprobs {params.logprobs} is more than max_logprobs {self.args.max_logprobs}")
        n, limit = len(prompt_token_ids), self.model_config.max_model_len
        if n == 0:
            raise ValueError("the prompt is empty")
        if n >= limit:
            raise ValueError(f"prompt is {n} tokens, but max_model_len is {limit} (room for at least one "
                             "generated token is needed)")
        bad = next((t for t in prompt_token_ids if not 0 <= t < self.cfg.vocab_size), None)
        if bad is not None:
            raise ValueError(f"prompt token id {bad} is outside the vocabulary [0, {self.cfg.vocab_size})")
        bad = next((t for t in params.logit_bias or () if not 0 <= t < self.cfg.vocab_size), None)
        if bad is not None:
            raise ValueError(f"logit_bias token id {bad} is outside the vocabulary [0, {self.cfg.vocab_size})")

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        self.validate(prompt_token_ids, params)
        req = Request(request_id, list(prompt_token_ids), params)
        room = self.model_config.max_model_len - len(prompt_token_ids)
        max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
        if params.grammar:
            from mini_vllm.structured.matcher import new_matcher
            self._grammar_requests.add(request_id)
        for i in range(params.n):
            seq = Sequence(req, i, next(self._seq_ids), max_tokens)
            if params.grammar:
                seq.matcher = new_matcher(params.grammar, self.tokenizer)
            detokenizer.start(seq)
            if i > 0 and self.args.enable_prefix_caching:
                seq.leader = req.seqs[0]
            req.seqs.append(seq)
            self.scheduler.add(seq)
        self.requests[request_id] = req
        self.prompt_tokens_total += len(prompt_token_ids)

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request now and free its blocks; returns its final output (None if unknown/done)."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return None
        self._grammar_requests.discard(request_id)
        for seq in req.seqs:
            async_step.drop_placeholders(seq)
            if seq.status is not Status.FINISHED:
                self.scheduler.remove(seq)
                seq.finish("abort")
        return request_output(req)

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    # ---- the step ------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        if self.async_scheduling and not self._grammar_requests:
            return async_step.step_async(self)
        if self._pending is not None:   # leaving async mode: hand out the launched step's tokens first
            return async_step.drain(self)
        batch = self.scheduler.schedule()
        if not batch.seqs:
            return []
        touched: dict[str, Request] = {}
        ran = self._execute(batch, touched)
        if ran is None:
            return self._collect(touched)
        inputs, logits = ran
        if self.gpu_wait_hook is not None:   # the forward is enqueued, the GPU busy: hand over outputs now
            self.gpu_wait_hook()
        seqs = batch.seqs
        sampled = seqs if inputs.sample_all else [s for s, r in zip(seqs, inputs.sample_rows) if r >= 0]
        self._advance(batch)
        if sampled:
            try:
                result = self.sampler(logits, sampled)
            except Exception as e:  # noqa: BLE001
                log.exception("sampling failed")
                for seq in sampled:
                    self._fail(seq, f"sampling failed: {type(e).__name__}: {e}", touched)
                return self._collect(touched)
            self._accept_all(sampled, result.token_ids, result.logprobs, touched)
        return self._collect(touched)

    def _execute(self, batch, touched: dict[str, Request], prev_tokens=None):
        """(inputs, logits) of the batch's forward; None when the model call raised (the batch's requests
        are failed then, the engine lives on). prev_tokens: async scheduling's ids of the last step."""
        inputs = build_step_inputs(batch, self.args.block_size, self.blocks.tables)
        inputs.prev_tokens = prev_tokens
        self.step_tokens.observe(len(inputs.input_ids))
        try:
            return inputs, self.runner.execute(inputs)
        except Exception as e:  # noqa: BLE001 - the batch's requests fail, the engine lives on
            log.exception("model step failed")
            for seq in batch.seqs:
                self._fail(seq, f"model step failed: {type(e).__name__}: {e}", touched)
            return None

    def _advance(self, batch, register: bool = True) -> None:
        """The batch's new tokens are in the KV cache: count them, register newly full blocks (async
        scheduling registers later, once the tokens of those blocks are known: `_register`)."""
        for seq, n in zip(batch.seqs, batch.num_new):
            seq.num_computed_tokens += n
        if register:
            self._register(batch)

    def _register(self, batch) -> None:
        blocks = self.blocks
        if not blocks.enable_prefix_caching:
            return
        bs = blocks.block_size
        for seq in batch.seqs:
            if seq.status is not Status.FINISHED and seq.num_computed_tokens // bs > seq.num_hashed_blocks:
                blocks.register_full_blocks(seq)

    def _accept_all(self, sampled: list[Sequence], tokens: list[int],
                    logprobs: list[tuple[float, list[tuple[int, float]]] | None],
                    touched: dict[str, Request], at: list[int] | None = None) -> None:
        """Append each sampled token (detokenise, stop checks); a failure fails that request alone.
        `at`: the index of each token's placeholder (async scheduling) instead of appending."""
        now = time.monotonic()
        tok, eos, limit = self.tokenizer, self.eos_ids, self.model_config.max_model_len
        append, hook, finished_status = detokenizer.append_token, self.fault_hook, Status.FINISHED
        done: list[Sequence] = []
        accepted = 0
        for k, (seq, token, lp) in enumerate(zip(sampled, tokens, logprobs)):
            if seq.status is finished_status:
                continue
            try:
                if hook is not None:
                    hook(seq)
                if lp is not None and seq.logprobs is not None:
                    self._append_logprob(seq, token, lp)
                if seq.matcher is not None and not seq.matcher.consume_token(token):
                    raise RuntimeError(f"constrained decoding: token {token} rejected ({seq.matcher.get_error()})")
                if at is None:
                    append(seq, token, tok, eos, limit)
                else:
                    append(seq, token, tok, eos, limit, at[k])
                if seq.matcher is not None and seq.status is not finished_status and seq.matcher.is_stopped():
                    seq.finish("stop")          # the grammar is complete and allows nothing more
            except Exception as e:  # noqa: BLE001 - this request fails alone
                log.warning("request %s failed: %s", seq.req.request_id, traceback.format_exc())
                self._fail(seq, f"{type(e).__name__}: {e}", touched)
                continue
            accepted += 1
            req = seq.req
            if req.first_token is None:
                req.first_token = now
            touched[req.request_id] = req
            if seq.status is finished_status:
                done.append(seq)
        self.generation_tokens_total += accepted
        if done:
            self.scheduler.remove_finished(done)

    def _append_logprob(self, seq: Sequence, token: int, lp: tuple[float, list[tuple[int, float]]]) -> None:
        tok = self.tokenizer
        seq.logprobs.append(TokenLogprob(token, tok.id_to_token(token) or "", lp[0],
                                         [(i, tok.id_to_token(i) or "", v) for i, v in lp[1]]))

    def _fail(self, seq: Sequence, message: str, touched: dict[str, Request]) -> None:
        """Fail the whole request the sequence belongs to."""
        req = seq.req
        for s in req.seqs:
            async_step.drop_placeholders(s)
            if s.status is not Status.FINISHED:
                self.scheduler.remove(s)
                s.finish("error", error=message)
        touched[req.request_id] = req

    def _collect(self, touched: dict[str, Request]) -> list[RequestOutput]:
        outs = []
        for rid, req in touched.items():
            out = request_output(req)
            outs.append(out)
            if out.finished:
                self.requests.pop(rid, None)
                self._grammar_requests.discard(rid)
        return outs

    # ---- offline convenience -------------------------------------------------------------------
    def generate(self, prompts_token_ids: list[list[int]], params: SamplingParams | list[SamplingParams]
                 ) -> list[RequestOutput]:
        """Run prompts to completion; outputs in prompt order."""
        plist = params if isinstance(params, list) else [params] * len(prompts_token_ids)
        base = f"gen-{next(self._seq_ids)}-"
        ids = [f"{base}{i}" for i in range(len(prompts_token_ids))]
        for rid, p, sp in zip(ids, prompts_token_ids, plist):
            self.add_request(rid, p, sp)
        final: dict[str, RequestOutput] = {}
        while any(rid not in final for rid in ids):
            for out in self.step():
                if out.finished:
                    final[out.request_id] = out
        return [final[rid] for rid in ids]

    def stats(self) -> EngineStats:
        running = {s.req.request_id for s in self.scheduler.running}
        waiting = {s.req.request_id for s in self.scheduler.waiting} - running
        return EngineStats(
            num_requests_running=len(running), num_requests_waiting=len(waiting),
            kv_cache_usage=self.blocks.usage(), prefix_cache_queries=self.blocks.queries,
            prefix_cache_hits=self.blocks.hits, num_preemptions=self.scheduler.num_preemptions,
            prompt_tokens_total=self.prompt_tokens_total, generation_tokens_total=self.generation_tokens_total,
            iteration_token_buckets=self.step_tokens.buckets, iteration_token_counts=tuple(self.step_tokens.counts),
            iteration_tokens_sum=self.step_tokens.sum)
