"""Batched sampling: greedy, temperature, top-k, top-p, min-p, per-sequence seeds, logprobs.

One vectorised pass for the whole batch; an all-greedy batch without logprobs is a single argmax.
Random draws use the exponential race (argmax of p / E, E ~ Exp(1)), which equals sampling from p and
lets a seeded sequence draw its noise from its own torch.Generator: the same seed gives the same
tokens whatever else is in the batch. Logprobs are the log-softmax of the temperature-scaled logits
(raw logits for greedy), before top-k/top-p/min-p truncation, so they stay finite. OpenAI's
`logit_bias` is added to the logits first (on a copy: the logits may be a CUDA graph's output buffer),
so it steers greedy and random picks alike and shows in the logprobs, as in OpenAI's API. A sequence
under constrained decoding has its disallowed tokens masked to -inf next (structured/matcher.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mini_vllm.engine.sequence import Sequence


@dataclass
class SampleResult:
    token_ids: list[int]
    # per row: (chosen logprob, [(id, logprob) top-N]) or None when the sequence asked for none
    logprobs: list[tuple[float, list[tuple[int, float]]] | None]


def apply_logit_bias(logits: torch.Tensor, params: list) -> torch.Tensor:
    """logits + each row's {token id: bias}, as a new tensor (one scatter for the whole batch)."""
    rows, cols, vals = [], [], []
    for i, p in enumerate(params):
        for tok, bias in (p.logit_bias or {}).items():
            rows.append(i)
            cols.append(tok)
            vals.append(bias)
    dev = logits.device
    out = logits.clone()
    out.index_put_((torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)),
                   torch.tensor(vals, device=dev, dtype=out.dtype), accumulate=True)
    return out


class Sampler:
    def __init__(self, seed: int = 0):
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        """The unseeded rows' generator, on the logits' device (a CUDA tensor needs a CUDA generator)."""
        g = self._generators.get(device)
        if g is None:
            g = self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return g

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> SampleResult:
        tokens, lp = self.sample(logits, seqs)
        return self.results(tokens.tolist(), lp, seqs)

    def sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> tuple[torch.Tensor, tuple | None]:
        """Token ids [rows] on the logits' device without a host sync, plus (when some row wants logprobs)
        the logprob tensors, computed now - the logits may be a CUDA graph's output buffer that the next
        step overwrites. `results` turns both into a SampleResult once the ids are on the host."""
        params = [s.params for s in seqs]
        if any(p.logit_bias for p in params):
            logits = apply_logit_bias(logits, params)
        matchers = [getattr(s, "matcher", None) for s in seqs]   # (stand-in rows in tests have none)
        if any(m is not None for m in matchers):           # constrained rows: only what the grammar allows
            from mini_vllm.structured.matcher import apply_masks
            logits = apply_masks(logits, matchers)
        if all(p.greedy for p in params):
            tokens, scaled = logits.argmax(dim=-1), logits
        else:
            tokens, scaled = self._sample(logits, seqs)
        rows = [i for i, p in enumerate(params) if p.logprobs is not None]
        if not rows:
            return tokens, None
        logp = torch.log_softmax(scaled[rows].float(), dim=-1)
        chosen = logp.gather(1, tokens[rows].unsqueeze(1)).squeeze(1)
        k = max(params[i].logprobs for i in rows)
        top_v, top_i = (logp.topk(k, dim=-1) if k > 0 else (logp[:, :0], logp[:, :0].long()))
        return tokens, (rows, chosen, top_v, top_i)

    def results(self, token_list: list[int], lp: tuple | None, seqs: list[Sequence]) -> SampleResult:
        lps: list[tuple[float, list[tuple[int, float]]] | None] = [None] * len(seqs)
        if lp is not None:
            rows, chosen, top_v, top_i = lp
            chosen, top_v, top_i = chosen.tolist(), top_v.tolist(), top_i.tolist()
            for j, i in enumerate(rows):
                n = seqs[i].params.logprobs
                lps[i] = (chosen[j], list(zip(top_i[j][:n], top_v[j][:n])))
        return SampleResult(token_list, lps)

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> tuple[torch.Tensor, torch.Tensor]:
        params = [s.params for s in seqs]
        dev = logits.device
        temps = torch.tensor([p.temperature if p.temperature > 0 else 1.0 for p in params], device=dev)
        scaled = logits / temps.unsqueeze(1)
        probs_logits = scaled
        top_k = [p.top_k if p.top_k and p.top_k > 0 else 0 for p in params]
        top_p = [p.top_p for p in params]
        min_p = [p.min_p for p in params]
        if any(top_k) or any(tp < 1.0 for tp in top_p):
            sorted_l, idx = probs_logits.sort(dim=-1, descending=True)
            mask = torch.zeros_like(sorted_l, dtype=torch.bool)
            if any(top_k):
                k = torch.tensor([k if k else logits.shape[-1] for k in top_k], device=dev)
                mask |= torch.arange(logits.shape[-1], device=dev).unsqueeze(0) >= k.unsqueeze(1)
            if any(tp < 1.0 for tp in top_p):
                sp = torch.softmax(sorted_l.masked_fill(mask, float("-inf")), dim=-1)
                before = sp.cumsum(dim=-1) - sp          # mass of strictly better tokens
                mask |= before > torch.tensor(top_p, device=dev).unsqueeze(1)
            mask[:, 0] = False
            sorted_l = sorted_l.masked_fill(mask, float("-inf"))
            probs_logits = torch.full_like(scaled, float("-inf")).scatter(1, idx, sorted_l)
        probs = torch.softmax(probs_logits, dim=-1)
        if any(m > 0 for m in min_p):
            mp = torch.tensor(min_p, device=dev).unsqueeze(1)
            probs = probs.masked_fill(probs < mp * probs.max(dim=-1, keepdim=True).values, 0.0)
        noise = torch.empty_like(probs)
        unseeded = [i for i, s in enumerate(seqs) if s.generator is None]
        if unseeded:
            noise[unseeded] = torch.empty(len(unseeded), probs.shape[1], device=dev).exponential_(
                generator=self.generator(dev))
        for i, s in enumerate(seqs):
            if s.generator is not None:     # drawn on the CPU: the same seed gives the same noise on any device
                noise[i] = torch.empty(probs.shape[1]).exponential_(generator=s.generator).to(dev)
        sampled = (probs / noise).argmax(dim=-1)
        greedy_rows = [p.greedy for p in params]
        if not any(greedy_rows):
            return sampled, scaled
        tokens = torch.where(torch.tensor(greedy_rows, device=dev), logits.argmax(dim=-1), sampled)
        return tokens, scaled
