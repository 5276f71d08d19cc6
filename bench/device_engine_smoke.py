"""Device check (the lead runs it on the H100): the engine on CUDA vs on CPU, tiny model, and its speed.

Runs the tiny checkpoint through LLMEngine with device=cuda (bf16, then float32) and device=cpu
(float32), greedy 32 x 64 tokens; prints tokens/s of each and how many prompts' float32 CUDA output
equals the CPU output token for token (bf16 is reported, not required, to match). Exit 1 if float32
CUDA and CPU disagree on more than 2 of the 32 prompts.

    python bench/device_engine_smoke.py [--model DIR]   # DIR: any GPT-OSS dir; default: the tiny model
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch


def run(model: str, device: str, dtype: str, prompts: list[list[int]]) -> tuple[float, list[list[int]]]:
    from mini_vllm.engine.llm_engine import LLMEngine
    from mini_vllm.engine_args import EngineArgs
    from mini_vllm.sampling_params import SamplingParams

    eng = LLMEngine(EngineArgs(model=model, device=device, dtype=dtype, kv_cache_memory_gb=1.0))
    p = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
    eng.generate(prompts[:2], SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    outs = eng.generate(prompts, p)
    dt = time.perf_counter() - t0
    return len(prompts) * 64 / dt, [o.outputs[0].token_ids for o in outs]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="")
    a = ap.parse_args()
    from mini_vllm.model.tiny import write_tiny_checkpoint
    with tempfile.TemporaryDirectory() as tmp:
        model = a.model or str(write_tiny_checkpoint(Path(tmp) / "tiny-gpt-oss"))
        g = torch.Generator().manual_seed(0)
        prompts = [torch.randint(0, 800, (int(n),), generator=g).tolist()
                   for n in torch.randint(8, 64, (32,), generator=g)]
        results = {(d, t): run(model, d, t, prompts)
                   for d, t in (("cpu", "float32"), ("cuda", "float32"), ("cuda", "bfloat16"))}
    ref = results[("cpu", "float32")][1]
    bad = 0
    for (d, t), (tps, toks) in results.items():
        same = sum(x == y for x, y in zip(toks, ref))
        print(f"{d:5s} {t:9s} {tps:10,.0f} tok/s  identical to cpu float32: {same}/{len(ref)}")
        if (d, t) == ("cuda", "float32"):
            bad = len(ref) - same
    return 1 if bad > 2 else 0


if __name__ == "__main__":
    sys.exit(main())
