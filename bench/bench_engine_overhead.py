#!/usr/bin/env python3
"""Host time per engine step (scheduler, inputs, sampling, detokenisation, outputs) with the model faked.

Why: on an H100 a decode step of gpt-oss-20b at batch 256 is ~20 ms of GPU work; whatever the Python
engine spends around it adds to every inter-token latency. Faking the forward (random logits of the
right shape) isolates that host time on any machine. Peer in the same run: the same requests with the
real tiny model's CPU forward, so the ratio says what share of a CPU step is host work.

    .venv/bin/python bench/bench_engine_overhead.py [--batch 256] [--tokens 64]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

from mini_vllm.engine.llm_engine import LLMEngine  # noqa: E402
from mini_vllm.engine_args import EngineArgs  # noqa: E402
from mini_vllm.model.tiny import write_tiny_checkpoint  # noqa: E402
from mini_vllm.sampling_params import SamplingParams  # noqa: E402


def run(model: Path, batch: int, tokens: int, fake: bool) -> float:
    eng = LLMEngine(EngineArgs(model=str(model), max_num_seqs=batch, kv_cache_memory_gb=1.0,
                               max_num_batched_tokens=8192))
    if fake:
        vocab = eng.cfg.vocab_size

        def execute(inp):
            rows = sum(1 for r in inp.sample_rows if r >= 0)
            return torch.randn(rows, vocab) if rows else None

        eng.runner.execute = execute
    for i in range(batch):
        eng.add_request(f"r{i}", [(i * 7 + j) % 800 for j in range(64)],
                        SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True))
    eng.step()                                   # the prefill step is not counted
    steps, t0 = 0, time.perf_counter()
    while eng.has_unfinished():
        eng.step()
        steps += 1
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    model = write_tiny_checkpoint(Path(tempfile.mkdtemp()) / "tiny")
    host = run(model, args.batch, args.tokens, fake=True)
    full = run(model, args.batch, args.tokens, fake=False)
    print(f"batch {args.batch}: host work {host * 1e3:.2f} ms/step (model faked); with the tiny model's CPU "
          f"forward {full * 1e3:.2f} ms/step; host share {host / full:.0%}")


if __name__ == "__main__":
    main()
