#!/usr/bin/env python3
"""Tensor parallelism on several GPUs: TP=N against TP=1 on the same checkpoint, in one run.

For the multi-GPU issue (needs a machine with >= 2 GPUs; NVLink multicast stays off: the env below).
For each TP size it starts the offline engine (rank 0 here, workers spawned by mini_vllm.engine.tensor_parallel over
NCCL), then
  1. greedy generation of a few prompts: tokens must be identical to TP=1;
  2. logprobs of the first generated tokens: max |difference| to TP=1 (bf16 tolerance);
  3. single-stream decode tok/s and offline output tok/s at 64 concurrent requests (1024 in / 128 out).
Runs on the CPU too (gloo, the tiny model) to check the script itself:
    python3 bench/device_bench_tp.py --model DIR --tp 1,2 [--device cpu]
Results: a table on stdout and $OUT/tp_results.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

for k, v in {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}.items():
    os.environ[k] = v

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

from mini_vllm.engine.llm_engine import LLMEngine  # noqa: E402
from mini_vllm.engine_args import EngineArgs  # noqa: E402
from mini_vllm.engine.tensor_parallel import start_tensor_parallel  # noqa: E402
from mini_vllm.sampling_params import SamplingParams  # noqa: E402

PROMPTS = [[(i * 13 + j * 7) % 800 for j in range(n)] for i, n in enumerate((5, 40, 200))]


def measure(model: str, tp: int, device: str, max_len: int, batch: int) -> dict:
    args = EngineArgs(model=model, tensor_parallel_size=tp, device=device, max_model_len=max_len,
                      max_num_seqs=max(batch, 8))
    group = None
    if tp > 1:                     # rank 0 here; ranks 1..N-1 spawned, one per GPU (gloo on the CPU)
        eng, group = start_tensor_parallel(args)
    else:
        eng = LLMEngine(args)
    assert eng.runner.model.tp_size == tp, "the engine did not shard"
    try:
        greedy = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True, logprobs=1)
        outs = eng.generate(PROMPTS, greedy)
        tokens = [o.outputs[0].token_ids for o in outs]
        lps = [[lp.logprob for lp in o.outputs[0].logprobs[:8]] for o in outs]
        long_prompt = [(j * 11) % 800 for j in range(min(1024, max_len // 2))]
        eng.add_request("single", long_prompt, SamplingParams(temperature=0.0, max_tokens=128, ignore_eos=True))
        eng.step()                                       # prefill
        t0, steps = time.perf_counter(), 0
        while eng.has_unfinished():
            eng.step()
            steps += 1
        single = steps / (time.perf_counter() - t0)
        for i in range(batch):
            eng.add_request(f"b{i}", [(t + i) % 800 for t in long_prompt],
                            SamplingParams(temperature=0.0, max_tokens=128, ignore_eos=True))
        t0 = time.perf_counter()
        while eng.has_unfinished():
            eng.step()
        throughput = batch * 128 / (time.perf_counter() - t0)
    finally:
        if group is not None:
            group.close()
    return {"tp": tp, "tokens": tokens, "logprobs": lps, "single_stream_tok_s": single,
            f"offline_{batch}_tok_s": throughput}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--tp", default="1,2")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    rows = [measure(args.model, int(tp), args.device, args.max_model_len, args.batch) for tp in args.tp.split(",")]
    base = rows[0]
    print(f"| TP | greedy == TP={base['tp']} | max |dlogprob| | single-stream tok/s | offline {args.batch} conc. tok/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        same = r["tokens"] == base["tokens"]
        diff = max(abs(a - b) for ra, rb in zip(r["logprobs"], base["logprobs"]) for a, b in zip(ra, rb))
        r["greedy_identical"], r["max_logprob_diff"] = same, diff
        print(f"| {r['tp']} | {same} | {diff:.2e} | {r['single_stream_tok_s']:.1f} | "
              f"{r[f'offline_{args.batch}_tok_s']:.0f} |")
    out = Path(os.environ.get("OUT", "/tmp/out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "tp_results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
