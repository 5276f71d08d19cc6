"""HTTP load for the device benchmarks: `mini-vllm serve` on a checkpoint, then streamed completions.

Split out of device_bench_gptoss.py (which imports `part_http`): start -> healthy time, then per
concurrency level output tok/s, TTFT and inter-token latency p50/p99 measured by an httpx client that
splits SSE lines on \\n only (a generated U+2028 must not split a `data:` line).
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


# ---- http ----------------------------------------------------------------------------------------
async def _one(client, url: str, prompt: list[int], max_tokens: int) -> dict:
    t0 = time.perf_counter()
    first, last, gaps, n = None, None, [], 0
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "stream": True,
            "temperature": 0.0, "stream_options": {"include_usage": True}}
    tokens = 0
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
                chunk = json.loads(line[6:])
                if chunk.get("error"):          # the server failed the request mid-stream: say why
                    raise RuntimeError(f"stream error: {json.dumps(chunk['error'])[:500]}")
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                if not chunk.get("choices"):
                    continue
                n += 1
                if first is None:
                    first = now - t0
                elif last is not None:
                    gaps.append(now - last)
                last = now
    # one SSE event may carry several tokens when the client falls behind (coalescing): the
    # per-token latency of a request is its decode time over its tokens after the first
    tpot = (last - t0 - first) / (tokens - 1) if tokens > 1 and first is not None else None
    return {"ttft": first, "gaps": gaps, "chunks": n, "tokens": tokens, "tpot": tpot,
            "e2e": time.perf_counter() - t0}


async def _load(url: str, conc: int, prompt_len: int, max_tokens: int) -> dict:
    import httpx

    g = torch.Generator().manual_seed(conc * 100003 + max_tokens)   # fresh prompts per level: no prefix-cache hits
    prompts = [torch.randint(0, 800, (prompt_len,), generator=g).tolist() for _ in range(conc)]
    async with httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=conc + 8)) as client:
        s = time.perf_counter()
        got = await asyncio.gather(*[_one(client, url, p, max_tokens) for p in prompts], return_exceptions=True)
        wall = time.perf_counter() - s
    failed = [r for r in got if isinstance(r, BaseException)]
    if failed:
        kinds = sorted({str(e)[:300] for e in failed})
        raise RuntimeError(f"{len(failed)} of {conc} requests failed; first distinct errors: {kinds[:3]}")
    res = [r for r in got if isinstance(r, dict)]
    ttft = sorted(r["ttft"] for r in res if r["ttft"] is not None)
    gaps = sorted(x for r in res for x in r["gaps"])
    tpot = sorted(r["tpot"] for r in res if r["tpot"] is not None)
    short = sum(r["tokens"] != max_tokens for r in res)
    if short:
        raise RuntimeError(f"{short} of {conc} requests did not report {max_tokens} completion tokens")

    def pct(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1e3 if xs else float("nan")

    return {"concurrency": conc, "in": prompt_len, "out": max_tokens, "output_tok_s": conc * max_tokens / wall,
            "wall_s": wall, "ttft_ms_p50": pct(ttft, .5), "ttft_ms_p99": pct(ttft, .99),
            "itl_ms_p50": pct(gaps, .5), "itl_ms_p99": pct(gaps, .99),
            "tpot_ms_p50": pct(tpot, .5), "tpot_ms_p99": pct(tpot, .99),
            "tokens_per_event": sum(r["tokens"] for r in res) / max(1, sum(r["chunks"] for r in res))}


def part_http(levels: str, ckpt: Path, out: Path, results: dict, extra_args: tuple[str, ...] = (),
              env_extra: dict[str, str] | None = None, tag: str = "http",
              launcher: list[str] | None = None) -> None:
    import httpx

    port = 8011
    env = dict(os.environ, **(env_extra or {}), PYTHONPATH=str(ROOT / "python") + ":" + os.environ.get("PYTHONPATH", ""))
    log = open(out / f"server-{tag}.log", "w")
    t0 = time.perf_counter()
    launcher = launcher or [sys.executable, "-m", "mini_vllm.cli"]
    proc = subprocess.Popen([*launcher, "serve", str(ckpt), "--port", str(port),
                             "--host", "127.0.0.1", "--served-model-name", "bench", "--max-model-len", "4096",
                             "--max-num-seqs", str(max(256, *(int(x.split("x")[0]) for x in levels.split(",")))), "--max-num-batched-tokens", "8192",
                             "--disable-uvicorn-access-log", *extra_args], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited {proc.returncode}; see server-{tag}.log")
            if time.perf_counter() - t0 > 300:
                raise RuntimeError(f"server not healthy after 300 s; see server-{tag}.log")
            try:
                h = httpx.get(url + "/health", timeout=2)
                if h.status_code == 200:
                    break
                if "failed to load" in h.text:
                    raise RuntimeError(f"server: {h.text[:300]}")
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        healthy = time.perf_counter() - t0
        results[f"{tag}_serve_to_healthy_s"] = healthy
        print(f"[{tag}] `mini-vllm serve` start -> healthy: {healthy:.1f} s")
        asyncio.run(_load(url, 4, 1024, 16))   # warm-up (the server compiled its kernels at start-up)
        rows = []
        for spec in levels.split(","):
            conc, n_out = (int(x) for x in spec.split("x"))
            r = asyncio.run(_load(url, conc, 1024, n_out))
            rows.append(r)
            results[tag] = rows                # partial results survive a timeout of the whole call
            print(f"[{tag}] conc {conc:4d}  1024 in / {n_out:4d} out: {r['output_tok_s']:8.0f} output tok/s  "
                  f"TTFT p50/p99 {r['ttft_ms_p50']:.0f}/{r['ttft_ms_p99']:.0f} ms  "
                  f"ITL p50/p99 {r['itl_ms_p50']:.1f}/{r['itl_ms_p99']:.1f} ms (per event, "
                  f"{r['tokens_per_event']:.2f} tok/event), per-token p50/p99 {r['tpot_ms_p50']:.1f}/"
                  f"{r['tpot_ms_p99']:.1f} ms  ({r['wall_s']:.0f} s)", flush=True)
    except Exception:
        log.flush()                            # the server's side of a failure, in the call's output
        tail = (out / f"server-{tag}.log").read_text(errors="replace").splitlines()[-25:]
        print(f"[{tag}] last lines of server-{tag}.log:\n" + "\n".join(tail), flush=True)
        raise
    finally:
        proc.terminate()
        proc.wait(30)


