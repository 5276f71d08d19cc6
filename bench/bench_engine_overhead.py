#!/usr/bin/env python3
"""Host time per engine decode step (scheduler, inputs, sampling, detokenisation, outputs) with the model faked.

Why: on an H100 a decode step of gpt-oss-20b at batch 256 is ~20 ms of GPU work; whatever the Python
engine spends around it adds to every inter-token latency (and holds the GIL against the HTTP loop).
Faking the forward isolates that host time on any machine: the fake returns one of a few precomputed
random logit matrices (so tokens vary step to step and generating them costs nothing). Only decode steps
are timed: requests are stepped until each has its first token. Each step also calls `stats()`, as the
server's engine loop does. The best of `--repeats` runs is reported (the box is shared).

Peer in the same run: the same requests with the real tiny model's CPU forward (`--peer`), so the ratio
says what share of a CPU step is host work. `--phases` splits the host time by stage.

    .venv/bin/python bench/bench_engine_overhead.py [--batch 256] [--prompt 1024] [--tokens 64] [--phases] [--gc-freeze] [--peer]
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

import mini_vllm.engine.llm_engine as llm_engine  # noqa: E402
from mini_vllm.engine.llm_engine import LLMEngine  # noqa: E402
from mini_vllm.engine_args import EngineArgs  # noqa: E402
from mini_vllm.model.tiny import write_tiny_checkpoint  # noqa: E402
from mini_vllm.sampling_params import SamplingParams  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import timed  # noqa: E402

FAKE_POOL = 16


def _fake_execute(batch: int, vocab: int) -> Callable:
    pool = [torch.randn(batch, vocab) for _ in range(FAKE_POOL)]
    calls = [0]

    def execute(inp):
        rows = len(inp.sample_rows) - inp.sample_rows.count(-1)
        calls[0] += 1
        return pool[calls[0] % FAKE_POOL][:rows] if rows else None
    return execute


def _gc_timer(acc: dict[str, float]) -> Callable:
    """A gc callback adding the collector's pauses (by generation) to acc."""
    started = [0.0]

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            acc[f"  of which GC gen {info['generation']}"] += time.perf_counter() - started[0]
    return callback


def run(model: Path, batch: int, prompt: int, tokens: int, fake: bool,
        phases: dict[str, float] | None = None, freeze: bool = False) -> float:
    """Seconds per decode step. freeze: gc.freeze() after start-up, as a long-running server may do."""
    eng = LLMEngine(EngineArgs(model=str(model), max_num_seqs=batch, kv_cache_memory_gb=1.0,
                               max_num_batched_tokens=8192))
    if fake:
        eng.runner.execute = _fake_execute(batch, eng.cfg.vocab_size)
    for i in range(batch):
        eng.add_request(f"r{i}", [(i * 7 + j) % 800 for j in range(prompt)],
                        SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True))
    seqs = [s for r in eng.requests.values() for s in r.seqs]
    while any(s.num_output_tokens == 0 for s in seqs):      # prefill steps are not counted
        eng.step()
    if phases is not None:
        saved = llm_engine.build_step_inputs
        timed(eng.scheduler, "schedule", phases)
        timed(llm_engine, "build_step_inputs", phases)
        timed(eng.runner, "execute", phases, "fake model")
        timed(eng, "sampler", phases, "sampler (argmax, tolist)")
        timed(eng, "_accept_all", phases, "accept (detokenise, stop checks)")
        timed(eng, "_collect", phases, "RequestOutputs")
        timed(eng, "stats", phases, "stats()")
    if freeze:
        gc.collect()
        gc.freeze()
    gc_acc: dict[str, float] = defaultdict(float)
    callback = _gc_timer(gc_acc)
    if phases is not None:
        gc.callbacks.append(callback)
    steps, t0 = 0, time.perf_counter()
    while eng.has_unfinished():
        eng.step()
        eng.stats()
        steps += 1
    total = time.perf_counter() - t0
    if freeze:
        gc.unfreeze()
    if phases is not None:
        gc.callbacks.remove(callback)
        llm_engine.build_step_inputs = saved
        phases["rest (step glue: _advance, zip, lists)"] = total - sum(phases.values())
        phases.update(gc_acc)                   # GC pauses happen inside the stages above
        for k in phases:
            phases[k] /= steps
    return total / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--prompt", type=int, default=1024, help="prompt tokens per request (block table size)")
    ap.add_argument("--tokens", type=int, default=64, help="generated tokens per request")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--phases", action="store_true", help="also split the host time by stage (one more run)")
    ap.add_argument("--gc-freeze", action="store_true", help="also time with gc.freeze() after start-up")
    ap.add_argument("--peer", action="store_true", help="also run the tiny model's real CPU forward")
    args = ap.parse_args()
    model = write_tiny_checkpoint(Path(tempfile.mkdtemp()) / "tiny")
    shape = f"batch {args.batch}, prompt {args.prompt}, {args.tokens} generated"
    host = min(run(model, args.batch, args.prompt, args.tokens, fake=True) for _ in range(args.repeats))
    print(f"{shape}: host work {host * 1e3:.3f} ms/decode step (model faked; best of {args.repeats})")
    if args.phases:
        acc: dict[str, float] = defaultdict(float)
        run(model, args.batch, args.prompt, args.tokens, fake=True, phases=acc)
        for k, v in acc.items():
            print(f"  {k:40s} {v * 1e3:.3f} ms")
    if args.gc_freeze:
        frozen = min(run(model, args.batch, args.prompt, args.tokens, fake=True, freeze=True)
                     for _ in range(args.repeats))
        print(f"{shape}: with gc.freeze() after start-up {frozen * 1e3:.3f} ms/decode step "
              f"({frozen / host:.2f}x the above)")
    if args.peer:
        full = run(model, args.batch, args.prompt, args.tokens, fake=False)
        print(f"{shape}: with the tiny model's CPU forward {full * 1e3:.2f} ms/decode step; host share "
              f"{host / full:.0%}")


if __name__ == "__main__":
    main()
