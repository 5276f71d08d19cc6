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
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
OUT = Path(os.environ.get("OUT", "/tmp/out"))
CKPT = Path(os.environ.get("GPTOSS_DIR", "/tmp/gptoss-20b-shaped"))
RESULTS: dict[str, object] = {}


def sh(*args: str) -> None:
    subprocess.run([sys.executable, *args], check=True)


def ensure_ckpt(path: Path, layers: int) -> Path:
    if not (path / "config.json").exists():
        sh(str(ROOT / "bench" / "make_gptoss_shaped.py"), str(path), "--layers", str(layers))
    return path


def copy_bandwidth() -> float:
    """GB/s of a 4 GiB device-to-device copy, counting bytes read + written (median of 10)."""
    a = torch.empty(2 ** 31, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    times = []
    for _ in range(12):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); b.copy_(a); e.record(); torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    del a, b
    torch.cuda.empty_cache()
    return 2 * 2 ** 31 / statistics.median(times[2:]) / 1e9


def engine(model: Path, **kw):
    from mini_vllm.engine.llm_engine import LLMEngine
    from mini_vllm.engine_args import EngineArgs

    return LLMEngine(EngineArgs(model=str(model), **kw))


# ---- check ---------------------------------------------------------------------------------------
def part_check() -> None:
    from transformers import GptOssForCausalLM, Mxfp4Config

    from mini_vllm.model.cuda_forward import CudaAttnInputs
    from mini_vllm.model.tiny import write_tiny_checkpoint
    from mini_vllm.sampling_params import SamplingParams

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


# ---- decode --------------------------------------------------------------------------------------
def decode_step_bytes(model) -> int:
    """Bytes one batch-1 decode step must read: every dense weight once, 4 experts per layer, one embedding row."""
    cfg = model.cfg
    total = 0
    for lw in model.layers:
        total += sum(t.numel() * t.element_size() for t in
                     (lw.ln1, lw.ln2, lw.qkv_w, lw.qkv_b, lw.o_w, lw.o_b, lw.sinks, lw.router_w, lw.router_b))
        per_expert = lw.experts.nbytes() / lw.experts.num_experts
        total += cfg.num_experts_per_tok * per_expert
    total += model.lm_head.numel() * model.lm_head.element_size() + model.norm.numel() * model.norm.element_size()
    total += model.embed.shape[1] * model.embed.element_size()
    return int(total)


def part_decode(prompt_len: int = 1024, gen: int = 256) -> None:
    from mini_vllm.sampling_params import SamplingParams

    bw = copy_bandwidth()
    ckpt = ensure_ckpt(CKPT, 24)
    t0 = time.perf_counter()
    eng = engine(ckpt, max_model_len=4096, max_num_seqs=256)
    load_s = time.perf_counter() - t0
    print("[decode]", eng.runner.startup_report, f"(engine up in {load_s:.1f} s)")
    need = decode_step_bytes(eng.runner.model)
    kv_bytes = 2 * eng.cfg.num_hidden_layers * eng.runner.model.n_kv * eng.cfg.head_dim * 2 * (prompt_len + gen // 2)
    limit = bw * 1e9 / (need + kv_bytes)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 800, (prompt_len,), generator=g).tolist()
    p = SamplingParams(temperature=0.0, max_tokens=gen, ignore_eos=True)
    eng.generate([prompt[:64]], SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))  # warm-up
    eng.add_request("single", prompt, p)
    times = []
    while eng.has_unfinished():
        torch.cuda.synchronize()
        s = time.perf_counter()
        eng.step()
        times.append(time.perf_counter() - s)
    step_s = statistics.median(times[2:])
    tok_s = 1 / step_s
    RESULTS["single_stream"] = {"copy_bw_GBps": bw, "weight_bytes_per_step": need, "kv_bytes_per_step": kv_bytes,
                                "limit_tok_s": limit, "decode_tok_s": tok_s, "fraction_of_limit": tok_s / limit,
                                "prefill_s": times[0], "engine_up_s": load_s}
    print(f"[decode] copy bandwidth {bw:.0f} GB/s; a step reads {need / 1e9:.3f} GB weights + "
          f"{kv_bytes / 1e6:.0f} MB KV -> limit {limit:.0f} tok/s; measured {tok_s:.1f} tok/s "
          f"({tok_s / limit:.1%} of the limit); prefill of {prompt_len} tokens {times[0] * 1e3:.0f} ms")
    for batch in (16, 64):
        eng.generate([prompt[:128]] * 2, SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))
        for i in range(batch):
            eng.add_request(f"b{batch}-{i}", [(t + i) % 800 for t in prompt], SamplingParams(
                temperature=0.0, max_tokens=128, ignore_eos=True))
        s = time.perf_counter()
        steps = 0
        while eng.has_unfinished():
            eng.step()
            steps += 1
        wall = time.perf_counter() - s
        RESULTS[f"offline_batch{batch}"] = {"output_tok_s": batch * 128 / wall, "wall_s": wall}
        print(f"[decode] offline batch {batch} x (1024 in, 128 out): {batch * 128 / wall:.0f} output tok/s")


# ---- http ----------------------------------------------------------------------------------------
async def _one(client, url: str, prompt: list[int], max_tokens: int) -> dict:
    t0 = time.perf_counter()
    first, last, gaps, n = None, None, [], 0
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "stream": True,
            "temperature": 0.0}
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread()).decode()[:500]}")
        buf = b""
        async for piece in r.aiter_bytes():
            buf += piece
            *lines, buf = buf.split(b"\n")     # SSE lines end in \n only: never split on unicode breaks
            for raw in lines:
                line = raw.decode()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                now = time.perf_counter()
                if not json.loads(line[6:]).get("choices"):
                    continue
                n += 1
                if first is None:
                    first = now - t0
                elif last is not None:
                    gaps.append(now - last)
                last = now
    return {"ttft": first, "gaps": gaps, "chunks": n, "e2e": time.perf_counter() - t0}


async def _load(url: str, conc: int, prompt_len: int, max_tokens: int) -> dict:
    import httpx

    g = torch.Generator().manual_seed(conc * 100003 + max_tokens)   # fresh prompts per level: no prefix-cache hits
    prompts = [torch.randint(0, 800, (prompt_len,), generator=g).tolist() for _ in range(conc)]
    async with httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=conc + 8)) as client:
        s = time.perf_counter()
        res = await asyncio.gather(*[_one(client, url, p, max_tokens) for p in prompts])
        wall = time.perf_counter() - s
    ttft = sorted(r["ttft"] for r in res)
    gaps = sorted(x for r in res for x in r["gaps"])

    def pct(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1e3 if xs else float("nan")

    return {"concurrency": conc, "in": prompt_len, "out": max_tokens, "output_tok_s": conc * max_tokens / wall,
            "wall_s": wall, "ttft_ms_p50": pct(ttft, .5), "ttft_ms_p99": pct(ttft, .99),
            "itl_ms_p50": pct(gaps, .5), "itl_ms_p99": pct(gaps, .99)}


def part_http(levels: str) -> None:
    import httpx

    ckpt = ensure_ckpt(CKPT, 24)
    port = 8011
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python") + ":" + os.environ.get("PYTHONPATH", ""))
    log = open(OUT / "server.log", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "mini_vllm.cli", "serve", str(ckpt), "--port", str(port),
                             "--host", "127.0.0.1", "--served-model-name", "bench", "--max-model-len", "4096",
                             "--max-num-seqs", "256", "--max-num-batched-tokens", "8192",
                             "--disable-uvicorn-access-log"], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited {proc.returncode}; see server.log")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        healthy = time.perf_counter() - t0
        RESULTS["serve_to_healthy_s"] = healthy
        print(f"[http] `mini-vllm serve` start -> healthy: {healthy:.1f} s")
        asyncio.run(_load(url, 4, 1024, 16))   # warm-up (the server compiled its kernels at start-up)
        rows = []
        for spec in levels.split(","):
            conc, out = (int(x) for x in spec.split("x"))
            r = asyncio.run(_load(url, conc, 1024, out))
            rows.append(r)
            print(f"[http] conc {conc:4d}  1024 in / {out:4d} out: {r['output_tok_s']:8.0f} output tok/s  "
                  f"TTFT p50/p99 {r['ttft_ms_p50']:.0f}/{r['ttft_ms_p99']:.0f} ms  "
                  f"ITL p50/p99 {r['itl_ms_p50']:.1f}/{r['itl_ms_p99']:.1f} ms  ({r['wall_s']:.0f} s)", flush=True)
        RESULTS["http"] = rows
    finally:
        proc.terminate()
        proc.wait(30)


# ---- peer ----------------------------------------------------------------------------------------
def part_peer() -> None:
    from transformers import GptOssForCausalLM, Mxfp4Config

    ckpt = ensure_ckpt(CKPT, 24)
    t0 = time.perf_counter()
    model = GptOssForCausalLM.from_pretrained(str(ckpt), dtype=torch.bfloat16, device_map="cuda",
                                              quantization_config=Mxfp4Config(dequantize=True))
    print(f"[peer] transformers loaded in {time.perf_counter() - t0:.0f} s")
    g = torch.Generator().manual_seed(0)
    for batch, new in ((1, 64), (64, 32)):
        ids = torch.randint(0, 800, (batch, 128), generator=g).cuda()
        model.generate(ids[:, :16], max_new_tokens=2, do_sample=False)
        torch.cuda.synchronize()
        s = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        torch.cuda.synchronize()
        wall = time.perf_counter() - s
        tok = batch * (out.shape[1] - ids.shape[1])
        RESULTS[f"transformers_batch{batch}"] = {"output_tok_s": tok / wall, "in": 128, "out": new}
        print(f"[peer] transformers batch {batch} (128 in, {new} out): {tok / wall:.1f} output tok/s")


# ---- profile -------------------------------------------------------------------------------------
def part_profile(context: int = 1024) -> None:
    """Where a batch-1 decode step's GPU time goes: torch.profiler over eager forwards, top kernels."""
    from torch.profiler import ProfilerActivity, profile

    from mini_vllm.model.cuda_forward import CudaAttnInputs

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("parts", nargs="+", choices=["check", "decode", "http", "peer", "profile"])
    ap.add_argument("--levels", default="1x1024,16x1024,64x1024,256x1024,64x256,256x256")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}, torch {torch.__version__}")
    for part in args.parts:
        t0 = time.perf_counter()
        try:
            {"check": part_check, "decode": part_decode, "peer": part_peer, "profile": part_profile,
             "http": lambda: part_http(args.levels)}[part]()
        except Exception as e:  # noqa: BLE001 - report and go on with the next part
            import traceback

            traceback.print_exc()
            RESULTS[f"{part}_error"] = f"{type(e).__name__}: {e}"
        print(f"[{part}] done in {time.perf_counter() - t0:.0f} s", flush=True)
        (OUT / "gptoss_results.json").write_text(json.dumps(RESULTS, indent=1, default=str))


if __name__ == "__main__":
    main()
