#!/usr/bin/env python3
"""gpt-oss-20b shapes on one H100: correctness vs transformers, decode vs the bandwidth limit, HTTP load.

Run on the GPU machine (bench/device_run.sh calls it); parts are chosen on the command line:
  check   2-layer 20b-shaped checkpoint: our CUDA forward's logits vs transformers' GptOssForCausalLM on
          the same files (MXFP4 dequantised by transformers); tiny model greedy CUDA vs CPU
  decode  24 layers, offline engine: single-stream decode tok/s vs (bytes one decode step must read) /
          (copy bandwidth measured in this run)
  http    `mini-vllm serve` on the 24-layer checkpoint: time to healthy, then output tok/s, TTFT and ITL
          p50/p99 at 1/16/64/256 concurrent streamed completions (1024 in / 1024 and 256 out)
  peer    transformers generate() on the same 24-layer weights (bf16, eager) at batch 1 and 64
Results go to $OUT/gptoss_<part>.json and a table on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from device_http_load import part_http
from gptoss_common import (
    CKPT,
    OUT,
    RESULTS,
    copy_bandwidth,
    decode_step_bytes,
    engine,
    ensure_ckpt,
    graph_gpu_ms,
    offline,
    timed,
)


# ---- check ---------------------------------------------------------------------------------------
def part_check() -> None:
    from mini_vllm.model.cuda_forward import CudaAttnInputs
    from mini_vllm.model.tiny import write_tiny_checkpoint
    from mini_vllm.sampling_params import SamplingParams
    from transformers import GptOssForCausalLM, Mxfp4Config

    small = ensure_ckpt(Path("/tmp/gptoss-2l"), 2)
    eng = engine(small, max_model_len=4096, max_num_seqs=8, enforce_eager=True)
    runner = eng.runner
    print("[check]", getattr(runner, "startup_report", "no GPU path"))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 800, (1, 200), generator=g)
    L, bs = ids.shape[1], runner.block_size
    nb = -(-L // bs)
    dev = torch.device("cuda")
    a = CudaAttnInputs(torch.arange(L, device=dev), torch.arange(L, device=dev),
                       torch.tensor([0, L], dtype=torch.int32, device=dev),
                       torch.tensor([L], dtype=torch.int32, device=dev),
                       torch.arange(nb, dtype=torch.int32, device=dev).view(1, nb), L, L)
    with torch.inference_mode():
        hidden = runner.cuda_step.fwd.forward(ids[0].to(dev), a, runner.kv_caches)
        ours = torch.nn.functional.linear(hidden, runner.model.lm_head).float()
    del eng, runner
    torch.cuda.empty_cache()
    refs = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        ref_model = GptOssForCausalLM.from_pretrained(str(small), dtype=dtype, device_map="cuda",
                                                      quantization_config=Mxfp4Config(dequantize=True))
        with torch.inference_mode():
            refs[name] = ref_model(ids.to(dev)).logits[0].float()
        del ref_model
        torch.cuda.empty_cache()
    ref = refs["fp32"]

    def compare(x: torch.Tensor) -> dict[str, float]:
        per = (x - ref).norm(dim=-1) / ref.norm(dim=-1)
        return {"rel_l2": float((x - ref).norm() / ref.norm()), "worst_position_rel_l2": float(per.max()),
                "worst_position": int(per.argmax()), "median_position_rel_l2": float(per.median()),
                "argmax_agreement": float((x.argmax(-1) == ref.argmax(-1)).float().mean())}

    RESULTS["logits_vs_transformers_fp32"] = {"positions": L, "ours_bf16": compare(ours),
                                              "transformers_bf16": compare(refs["bf16"])}
    for who, x in (("ours (bf16)", ours), ("transformers bf16", refs["bf16"])):
        c = compare(x)
        print(f"[check] 2-layer 20b-shaped, {L} positions, {who} vs transformers fp32: rel L2 {c['rel_l2']:.2e}, "
              f"median/worst position {c['median_position_rel_l2']:.2e}/{c['worst_position_rel_l2']:.2e} "
              f"(at {c['worst_position']}), argmax agreement {c['argmax_agreement']:.1%}")
    tiny = write_tiny_checkpoint(Path("/tmp/tiny-gpt-oss"))
    prompts = [[5, 17, 42, 99, 7], list(range(30, 70)), [300, 301, 302]]
    p = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
    outs = {}
    for device, dtype in (("cpu", "float32"), ("cpu", "bfloat16"), ("cuda", "bfloat16")):
        e = engine(tiny, device=device, dtype=dtype, max_model_len=1024)
        outs[f"{device}-{dtype}"] = [o.outputs[0].token_ids for o in e.generate(prompts, p)]
        del e
    same_bf16 = outs["cpu-bfloat16"] == outs["cuda-bfloat16"]
    same_fp32 = outs["cpu-float32"] == outs["cuda-bfloat16"]
    RESULTS["tiny_greedy_identical"] = {"cuda_bf16_vs_cpu_bf16": same_bf16, "cuda_bf16_vs_cpu_fp32": same_fp32}
    print(f"[check] tiny model greedy 32 tokens x 3 prompts: CUDA bf16 == CPU bf16: {same_bf16}; "
          f"== CPU fp32: {same_fp32}")


def single_stream(eng, bw: float, prompt: list[int], gen: int, key: str, load_s: float) -> None:
    """Batch-1 greedy decode of one prompt: tok/s (median step) vs the bandwidth limit, and its step split."""
    from mini_vllm.sampling_params import SamplingParams

    prompt_len = len(prompt)
    need = decode_step_bytes(eng.runner.model)
    kv_bytes = 2 * eng.cfg.num_hidden_layers * eng.runner.model.n_kv * eng.cfg.head_dim * 2 * (prompt_len + gen // 2)
    limit = bw * 1e9 / (need + kv_bytes)
    phases: dict[str, float] = {}
    timed(eng.runner, "execute", phases)
    timed(eng.sampler, "sample", phases)          # sync and async both sample through Sampler.sample
    eng.add_request(key, prompt, SamplingParams(temperature=0.0, max_tokens=gen, ignore_eos=True))
    times = []
    while eng.has_unfinished():   # no sync per step: each call waits for the tokens it hands out
        s = time.perf_counter()
        eng.step()
        times.append(time.perf_counter() - s)
    step_s = statistics.median(times[2:])
    tok_s = 1 / step_s
    n = len(times)
    gpu_ms = graph_gpu_ms(eng.runner.cuda_step, 1, prompt_len + gen // 2)
    split = {"step_ms": step_s * 1e3, "graph_gpu_ms": gpu_ms, "host_gap_ms": step_s * 1e3 - gpu_ms,
             "execute_ms": phases["execute"] / n * 1e3, "sample_launch_ms": phases["sample"] / n * 1e3,
             "async_scheduling": eng.async_scheduling}
    RESULTS[key] = {"copy_bw_GBps": bw, "weight_bytes_per_step": need, "kv_bytes_per_step": kv_bytes,
                    "limit_tok_s": limit, "decode_tok_s": tok_s, "fraction_of_limit": tok_s / limit,
                    "prefill_s": max(times[:2]), "engine_up_s": load_s, "step_split": split}
    print(f"[{key}] copy bandwidth {bw:.0f} GB/s; a step reads {need / 1e9:.3f} GB weights + "
          f"{kv_bytes / 1e6:.0f} MB KV -> limit {limit:.0f} tok/s; measured {tok_s:.1f} tok/s "
          f"({tok_s / limit:.1%} of the limit); prefill of {prompt_len} tokens {max(times[:2]) * 1e3:.0f} ms")
    print(f"[{key}] batch-1 step split (ms): " + ", ".join(f"{k} {v:.3f}" for k, v in split.items()), flush=True)


# ---- decode --------------------------------------------------------------------------------------
def part_decode(prompt_len: int = 1024, gen: int = 256) -> None:
    from mini_vllm.sampling_params import SamplingParams

    bw = copy_bandwidth()
    ckpt = ensure_ckpt(CKPT, 24)
    t0 = time.perf_counter()
    eng = engine(ckpt, max_model_len=4096, max_num_seqs=512)
    load_s = time.perf_counter() - t0
    print("[decode]", eng.runner.startup_report, f"(engine up in {load_s:.1f} s)")
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 800, (prompt_len,), generator=g).tolist()
    eng.generate([prompt[:64]], SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))  # warm-up
    for seed in (None, 7):      # sampling on CUDA (unseeded: the device generator; seeded: per-sequence)
        outs = eng.generate([prompt[:64]] * 3, SamplingParams(temperature=0.8, top_p=0.9, max_tokens=8,
                                                               ignore_eos=True, seed=seed))
        print(f"[decode] temperature 0.8 / top-p 0.9 sampling (seed {seed}): "
              f"{[o.outputs[0].token_ids[:4] for o in outs]}")
    single_stream(eng, bw, prompt, gen, "single_stream", load_s)
    for batch, n_in, n_out in ((1, 1024, 128), (256, 1024, 256)):
        r = offline(eng, batch, n_in, n_out, seed=batch + n_out)
        bucket = next(b for b in eng.runner.cuda_step.buckets if b >= batch)
        r["graph_gpu_ms"] = graph_gpu_ms(eng.runner.cuda_step, bucket, n_in + n_out // 2)
        RESULTS[f"offline_b{batch}_{n_in}x{n_out}"] = r
        print(f"[decode] offline batch {batch:3d} x ({n_in} in, {n_out:3d} out): {r['output_tok_s']:7.0f} output tok/s; "
              f"decode step p50 {r['decode_step_ms_p50']:.2f} ms, its graph alone {r['graph_gpu_ms']:.2f} ms GPU", flush=True)


AB_CONFIGS = (("baseline", dict(gemv_kernels=False, async_scheduling=False)),
              ("gemv", dict(gemv_kernels=True, async_scheduling=False)),
              ("gemv+async", dict(gemv_kernels=True, async_scheduling=True)),
              ("gemv+async, MoE GEMV at T=1 too", dict(gemv_kernels=True, async_scheduling=True, gemv_min_tokens=1)),
              ("gemv+async, Triton attention", dict(gemv_kernels=True, async_scheduling=True,
                                                    attention_backend="triton")))


def part_decode_ab(prompt_len: int = 1024, gen: int = 128) -> None:
    """Same process, one engine after another: batch-1 decode and the batch-1/8 graphs' GPU time with our
    decode GEMVs and async scheduling off/on; batch 256 (1024 in / 128 out) with async off and on."""
    import gc

    from mini_vllm.sampling_params import SamplingParams

    ckpt = ensure_ckpt(CKPT, 24)
    g = torch.Generator().manual_seed(3)
    prompt = torch.randint(0, 800, (prompt_len,), generator=g).tolist()
    from mini_vllm.ops import gemv

    shipped_min = gemv.GEMV_MIN_TOKENS
    for name, kw in AB_CONFIGS:
        kw = dict(kw)
        gemv.GEMV_MIN_TOKENS = kw.pop("gemv_min_tokens", shipped_min)   # read when the graphs are captured
        eng = engine(ckpt, max_model_len=4096, max_num_seqs=256, **kw)
        print(f"[decodeab] {name}:", eng.runner.startup_report, flush=True)
        eng.generate([prompt[:64]], SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
        eng.add_request(f"ab-{name}", prompt, SamplingParams(temperature=0.0, max_tokens=gen, ignore_eos=True))
        times = []
        while eng.has_unfinished():   # no sync per step (async scheduling overlaps steps)
            s = time.perf_counter()
            eng.step()
            times.append(time.perf_counter() - s)
        step_ms = statistics.median(times[2:]) * 1e3
        r = {"step_ms": step_ms, "tok_s": 1e3 / step_ms,
             "graph_b1_ms": graph_gpu_ms(eng.runner.cuda_step, 1, prompt_len + gen // 2),
             "graph_b8_ms": graph_gpu_ms(eng.runner.cuda_step, 8, prompt_len + gen // 2)}
        if name in ("gemv", "gemv+async"):
            b = offline(eng, 256, prompt_len, 128, seed=256)
            b["graph_gpu_ms"] = graph_gpu_ms(eng.runner.cuda_step, 256, prompt_len + 64)
            r["b256"] = b
        RESULTS[f"decode_ab_{name}"] = r
        extra = (f"; batch 256 x (1024 in, 128 out): {r['b256']['output_tok_s']:.0f} tok/s, decode step p50 "
                 f"{r['b256']['decode_step_ms_p50']:.2f} ms vs its graph {r['b256']['graph_gpu_ms']:.2f} ms "
                 f"(host adds {r['b256']['decode_step_ms_p50'] / r['b256']['graph_gpu_ms'] - 1:.1%})"
                 if "b256" in r else "")
        print(f"[decodeab] {name}: batch-1 {r['tok_s']:.1f} tok/s (step {step_ms:.3f} ms), graph GPU "
              f"batch 1 {r['graph_b1_ms']:.3f} ms, batch 8 {r['graph_b8_ms']:.3f} ms{extra}", flush=True)
        del eng
        gc.collect()
        torch.cuda.empty_cache()
    gemv.GEMV_MIN_TOKENS = shipped_min


def part_big(levels: str = "1x1024,256x1024") -> None:
    """gpt-oss-120b shapes (36 layers, 128 experts), weights made in GPU memory (bench/synthetic_ckpt.py):
    batch-1 decode vs the limit, offline batches, then `mini-vllm serve` under HTTP load."""
    import gc

    import synthetic_ckpt

    synthetic_ckpt.install()
    ckpt = synthetic_ckpt.write(Path("/tmp/gptoss-120b-mem"), 36, 128)
    bw = copy_bandwidth()
    t0 = time.perf_counter()
    eng = engine(ckpt, max_model_len=4096, max_num_seqs=256)
    load_s = time.perf_counter() - t0
    print("[big]", eng.runner.startup_report, f"(engine up in {load_s:.1f} s, "
          f"{eng.runner.model.weight_bytes() / 1e9:.1f} GB of weights)", flush=True)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 800, (1024,), generator=g).tolist()
    offline(eng, 1, 64, 8, seed=1)                                     # warm-up
    single_stream(eng, bw, prompt, 128, "big_single_stream", load_s)
    for batch, n_in, n_out in ((64, 1024, 128), (256, 1024, 128)):
        r = offline(eng, batch, n_in, n_out, seed=batch)
        RESULTS[f"big_offline_b{batch}_{n_in}x{n_out}"] = r
        print(f"[big] offline batch {batch} x ({n_in} in, {n_out} out): {r['output_tok_s']:.0f} output tok/s; "
              f"decode step p50 {r['decode_step_ms_p50']:.2f} ms", flush=True)
    del eng
    gc.collect()
    torch.cuda.empty_cache()
    part_http(levels, ckpt, OUT, RESULTS, tag="http120b", launcher=[sys.executable, synthetic_ckpt.__file__])


# ---- peer ----------------------------------------------------------------------------------------
PEER_ROWS = ((1, 1024, 128), (64, 128, 32))   # (batch, in, out): transformers, then ours


def part_peer() -> None:
    """transformers generate() and our offline engine on the same (batch, in, out) rows, same weights."""
    import gc

    from transformers import GptOssForCausalLM, Mxfp4Config

    ckpt = ensure_ckpt(CKPT, 24)
    t0 = time.perf_counter()
    model = GptOssForCausalLM.from_pretrained(str(ckpt), dtype=torch.bfloat16, device_map="cuda",
                                              quantization_config=Mxfp4Config(dequantize=True))
    print(f"[peer] transformers loaded in {time.perf_counter() - t0:.0f} s")
    g = torch.Generator().manual_seed(0)
    for batch, n_in, new in PEER_ROWS:
        ids = torch.randint(0, 800, (batch, n_in), generator=g).cuda()
        try:
            model.generate(ids[:, :16], max_new_tokens=2, do_sample=False)
            torch.cuda.synchronize()
            s = time.perf_counter()
            out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
            torch.cuda.synchronize()
        except torch.OutOfMemoryError as e:      # eager attention at batch x long prompts
            RESULTS[f"transformers_b{batch}_{n_in}x{new}"] = {"error": f"OOM: {e}"[:200]}
            print(f"[peer] transformers batch {batch} ({n_in} in, {new} out): out of memory", flush=True)
            torch.cuda.empty_cache()
            continue
        wall = time.perf_counter() - s
        tok = batch * (out.shape[1] - ids.shape[1])
        RESULTS[f"transformers_b{batch}_{n_in}x{new}"] = {"output_tok_s": tok / wall, "in": n_in, "out": new}
        print(f"[peer] transformers batch {batch} ({n_in} in, {new} out): {tok / wall:.1f} output tok/s", flush=True)
        del out
        torch.cuda.empty_cache()
    del model
    gc.collect()
    torch.cuda.empty_cache()
    eng = engine(ckpt, max_model_len=4096, max_num_seqs=64)
    for batch, n_in, new in PEER_ROWS:
        offline(eng, 1, 64, 4, seed=99)                       # warm-up
        r = offline(eng, batch, n_in, new, seed=batch + new)
        RESULTS[f"ours_b{batch}_{n_in}x{new}"] = r
        peer = RESULTS.get(f"transformers_b{batch}_{n_in}x{new}", {}).get("output_tok_s")
        ratio = f" = {r['output_tok_s'] / peer:.1f}x transformers" if peer else ""
        print(f"[peer] ours batch {batch} ({n_in} in, {new} out): {r['output_tok_s']:.1f} output tok/s{ratio}",
              flush=True)


# ---- profile -------------------------------------------------------------------------------------
def part_profile(context: int = 1024) -> None:
    """Where a batch-1 decode step's GPU time goes: torch.profiler over eager forwards, top kernels."""
    from mini_vllm.model.cuda_forward import CudaAttnInputs
    from torch.profiler import ProfilerActivity, profile

    ckpt = ensure_ckpt(CKPT, 24)
    eng = engine(ckpt, max_model_len=4096, max_num_seqs=8, enforce_eager=True)
    r = eng.runner
    dev = torch.device("cuda")
    nb = -(-context // r.block_size)
    a = CudaAttnInputs(torch.tensor([context - 1], device=dev), torch.tensor([context - 1], device=dev),
                       torch.tensor([0, 1], dtype=torch.int32, device=dev),
                       torch.tensor([context], dtype=torch.int32, device=dev),
                       torch.arange(nb, dtype=torch.int32, device=dev).view(1, nb), 1, context)
    ids = torch.tensor([7], device=dev)

    def step() -> None:
        h = r.cuda_step.fwd.forward(ids, a, r.kv_caches)
        torch.nn.functional.linear(h, r.model.lm_head)

    with torch.inference_mode():
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                step()
            torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60)
    print(table)
    total_us = sum(e.self_device_time_total for e in prof.key_averages()) / 5
    RESULTS["profile_decode_b1_gpu_us_per_step"] = total_us
    print(f"[profile] GPU kernel time per batch-1 decode step: {total_us:.0f} us "
          f"(-> {1e6 / total_us:.0f} tok/s if the GPU never idled)")


def part_hostprof(batch: int = 256, steps: int = 30) -> None:
    """Where the host time of a batch-`batch` decode step goes: cProfile over `steps` engine steps."""
    import cProfile
    import io
    import pstats

    from mini_vllm.sampling_params import SamplingParams

    eng = engine(ensure_ckpt(CKPT, 24), max_model_len=4096, max_num_seqs=batch)
    g = torch.Generator().manual_seed(5)
    for i in range(batch):
        eng.add_request(f"hp{i}", torch.randint(0, 800, (1024,), generator=g).tolist(),
                        SamplingParams(temperature=0.0, max_tokens=64 + steps, ignore_eos=True))
    while any(s.num_computed_tokens < 1024 for s in eng.scheduler.running) or eng.scheduler.waiting:
        eng.step()
    for _ in range(3):
        eng.step()
    prof = cProfile.Profile()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(steps):
        eng.step()
    prof.disable()
    wall = (time.perf_counter() - t0) / steps
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
    print(buf.getvalue())
    RESULTS["hostprof"] = {"batch": batch, "step_ms_under_cprofile": wall * 1e3}
    print(f"[hostprof] batch {batch}: {wall * 1e3:.2f} ms per step under cProfile (tottime table above)")


def part_http_ab(levels: str) -> None:
    """The same short load against server variants named in $HTTP_AB ("name:ENV=V,ENV2=V;name2:...")."""
    for spec in filter(None, os.environ.get("HTTP_AB", "default:").split(";")):
        name, _, envs = spec.partition(":")
        env = dict(kv.split("=", 1) for kv in envs.split(",") if kv)
        part_http(levels, ensure_ckpt(CKPT, 24), OUT, RESULTS, env_extra=env, tag=f"ab-{name}")


PARTS = {"check": part_check, "decode": part_decode, "peer": part_peer, "profile": part_profile,
         "hostprof": part_hostprof, "decodeab": part_decode_ab}
BIG = "big"


def run_part(part: str, args: argparse.Namespace) -> None:
    """One part in this process; its results go to $OUT/gptoss_<part>.json."""
    fns = dict(PARTS, http=lambda: part_http(args.levels, ensure_ckpt(CKPT, 24), OUT, RESULTS),
               big=lambda: part_big(args.big_levels),
               httpab=lambda: part_http_ab(args.ab_levels))
    t0 = time.perf_counter()
    try:
        fns[part]()
    finally:
        print(f"[{part}] done in {time.perf_counter() - t0:.0f} s", flush=True)
        (OUT / f"gptoss_{part}.json").write_text(json.dumps(RESULTS, indent=1, default=str))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("parts", nargs="+", choices=[*PARTS, "http", "httpab", BIG])
    ap.add_argument("--big-levels", default="1x1024,256x1024", help="HTTP levels of the 120b part")
    ap.add_argument("--levels", default="1x1024,16x1024,64x1024,256x1024,64x256,256x256")
    ap.add_argument("--ab-levels", default="256x128")
    ap.add_argument("--in-process", action="store_true", help="run the parts here, not one subprocess each")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.in_process or len(args.parts) == 1:
        print(f"device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}, torch {torch.__version__}")
        for part in args.parts:
            run_part(part, args)
        return
    # one process per part: a failing part cannot leave the GPU full of the previous part's engine
    merged: dict[str, object] = {}
    for part in args.parts:
        cmd = [sys.executable, __file__, part, "--levels", args.levels, "--ab-levels", args.ab_levels,
               "--big-levels", args.big_levels]
        rc = subprocess.run(cmd).returncode
        f = OUT / f"gptoss_{part}.json"
        merged.update(json.loads(f.read_text()) if f.exists() else {})
        if rc != 0:
            merged[f"{part}_error"] = f"exit {rc} (traceback above)"
        (OUT / "gptoss_results.json").write_text(json.dumps(merged, indent=1, default=str))


if __name__ == "__main__":
    main()
