#!/usr/bin/env python3
"""HTTP/SSE layer cost at 1 / 64 / 256 concurrent streams, with the model replaced by a stand-in.

Why: the engine's GPU step at 256 streams is ~20 ms on the H100 but clients saw ~53 ms between tokens;
this isolates what the API path (AsyncEngine hand-off, SSE generators, uvicorn, GIL) adds. The server
is `mini-vllm serve` with `BenchFakeStepEngine` behind the real AsyncEngine (bench/api_overhead_server.py);
clients are httpx streaming /v1/completions in a separate process (their CPU is not the server's).

Reported per run: output tok/s delivered, server CPU-seconds per 1000 streamed tokens (the stand-in's
own step work subtracted), tokens per SSE event, client-side per-token latency p50/p99, and with a
simulated GPU step (`--step-ms`, slept with the GIL released) how much each engine step grows beyond it.
Peer in the same script: stream coalescing off (MINI_VLLM_STREAM_COALESCE=0) vs on, and the GIL switch
interval 5 ms (Python's default) vs MINI_VLLM_SWITCH_INTERVAL_MS.

    .venv/bin/python bench/bench_api_overhead.py [--tokens 128] [--conc 1,64,256] [--step-ms 20] [--markdown]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "bench"))

from api_overhead_server import TOKEN_CHARS  # noqa: E402
from mini_vllm.api.launcher import ServerProcess, free_port  # noqa: E402

PROMPT = "Once upon a time, in a small village by the sea, there lived an old fisherman"


# ---- the client process ------------------------------------------------------------------------
async def _one(client: httpx.AsyncClient, tokens: int) -> tuple[int, int, float, list[float]]:
    """One streamed completion: (tokens, events, ttft, per-token gaps)."""
    body = {"prompt": PROMPT, "max_tokens": tokens, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.monotonic()
    last, ttft, gaps, got, events, usage, buf = None, 0.0, [], 0, 0, None, b""
    async with client.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for data in r.aiter_bytes():
            buf += data
            *frames, buf = buf.split(b"\n\n")
            now = time.monotonic()
            for f in frames:
                if not f.startswith(b"data: {"):
                    continue
                chunk = json.loads(f[6:])
                if chunk.get("usage"):
                    usage = chunk["usage"]["completion_tokens"]
                if not chunk["choices"]:
                    continue
                k = len(chunk["choices"][0]["text"]) // TOKEN_CHARS
                if not k:
                    continue
                events += 1
                if last is None:
                    ttft = now - t0
                    gaps += [0.0] * (k - 1)
                else:
                    gaps += [(now - last) / k] * k
                last, got = now, got + k
    if usage != tokens or got != tokens:
        raise RuntimeError(f"expected {tokens} tokens; usage says {usage}, the stream carried {got}")
    return got, events, ttft, gaps


async def _client(url: str, conc: int, tokens: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=conc + 8, max_keepalive_connections=conc + 8)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as c:
        t0 = time.monotonic()
        res = await asyncio.gather(*(_one(c, tokens) for _ in range(conc)))
        wall = time.monotonic() - t0
    gaps = sorted(g for r in res for g in r[3])
    q = lambda p: gaps[min(len(gaps) - 1, int(p * len(gaps)))] if gaps else float("nan")  # noqa: E731
    return {"wall": wall, "tokens": sum(r[0] for r in res), "events": sum(r[1] for r in res),
            "ttft_p50": statistics.median(r[2] for r in res), "itl_p50": q(.5), "itl_p99": q(.99)}


def run_client(url: str, conc: int, tokens: int) -> dict[str, Any]:
    """Drive `conc` streams from a separate process; returns its measurements."""
    out = subprocess.run([sys.executable, __file__, "--client", url, "--conc", str(conc), "--tokens", str(tokens)],
                         capture_output=True, text=True, timeout=900)
    if out.returncode:
        raise RuntimeError(f"client failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- one server configuration ------------------------------------------------------------------
def start(model: Path, log_dir: str, step_ms: float, coalesce: bool, switch_ms: float | None,
          max_seqs: int) -> ServerProcess:
    port = free_port()
    log_path = Path(log_dir) / f"server-{port}.log"
    env = dict(os.environ, MINI_VLLM_STREAM_COALESCE="1" if coalesce else "0")
    env.pop("MINI_VLLM_SWITCH_INTERVAL_MS", None)
    if switch_ms is not None:
        env["MINI_VLLM_SWITCH_INTERVAL_MS"] = str(switch_ms)
    cmd = [sys.executable, str(ROOT / "bench" / "api_overhead_server.py"), str(model), "--step-ms", str(step_ms),
           "--", "--host", "127.0.0.1", "--port", str(port), "--max-num-seqs", str(max_seqs),
           "--max-waiting", "4096", "--disable-uvicorn-access-log", "--log-level", "warning"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    srv = ServerProcess(proc, f"http://127.0.0.1:{port}", log_path)
    srv.wait_ready(120)
    return srv


def measure(srv: ServerProcess, conc: int, tokens: int, step_ms: float) -> dict[str, Any]:
    run_client(srv.url, min(conc, 16), 8)                          # warm-up: imports, first allocations
    before = httpx.get(srv.url + "/bench/stats").json()
    res = run_client(srv.url, conc, tokens)
    after = httpx.get(srv.url + "/bench/stats").json()
    starts, batch = after["step_starts"], after["batch"]
    full = [starts[i + 1] - starts[i] for i in range(len(starts) - 1) if batch[i] == conc and batch[i + 1] == conc]
    extra = sorted((d - step_ms / 1000) * 1000 for d in full)
    cpu = after["process_cpu_s"] - before["process_cpu_s"] - after["stand_in_cpu_s"]
    res.update(server_cpu_per_1k=cpu / res["tokens"] * 1000, tok_s=res["tokens"] / res["wall"],
               tok_per_event=res["tokens"] / max(1, res["events"]),
               step_extra_p50=extra[len(extra) // 2] if extra else float("nan"),
               step_extra_mean=statistics.fmean(extra) if extra else float("nan"))
    return res


# ---- driver ------------------------------------------------------------------------------------
HEAD = ["step ms", "streams", "coalesce", "switch ms", "output tok/s", "server CPU s / 1k tok", "tok / event",
        "ITL p50 ms", "ITL p99 ms", "step +ms p50", "step +ms mean"]


def _row(step: float, conc: int, coalesce: bool, switch: float | None, r: dict[str, Any]) -> list[str]:
    return [f"{step:g}", str(conc), "on" if coalesce else "off", "5 (default)" if switch is None else f"{switch:g}",
            f"{r['tok_s']:,.0f}", f"{r['server_cpu_per_1k']:.3f}", f"{r['tok_per_event']:.2f}",
            f"{r['itl_p50'] * 1000:.2f}", f"{r['itl_p99'] * 1000:.2f}",
            f"{r['step_extra_p50']:.2f}" if step else "-", f"{r['step_extra_mean']:.2f}" if step else "-"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)
    ap.add_argument("--tokens", type=int, default=128, help="tokens per request")
    ap.add_argument("--conc", default="1,64,256", help="concurrent streams (comma list) for the no-sleep runs")
    ap.add_argument("--step-ms", type=float, default=20.0, help="simulated GPU step for the latency runs")
    ap.add_argument("--step-conc", type=int, default=256, help="streams for the simulated-step runs")
    ap.add_argument("--switch-ms", type=float, default=1.0, help="the smaller GIL switch interval to compare")
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    if a.client:
        print(json.dumps(asyncio.run(_client(a.client, int(a.conc), a.tokens))))
        return
    from mini_vllm.model.tiny import write_tiny_checkpoint

    concs = [int(c) for c in a.conc.split(",")]
    rows: list[list[str]] = []
    results: dict[tuple, dict[str, Any]] = {}
    console = Console(width=200)
    plan = [(0.0, coalesce, None, concs) for coalesce in (False, True)]
    plan += [(a.step_ms, coalesce, sw, [a.step_conc]) for coalesce in (False, True) for sw in (None, a.switch_ms)]
    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_checkpoint(Path(tmp) / "tiny-gpt-oss")
        for step, coalesce, sw, cs in plan:
            srv = start(model, tmp, step, coalesce, sw, max(cs))
            try:
                for conc in cs:
                    r = results[(step, conc, coalesce, sw)] = measure(srv, conc, a.tokens, step)
                    rows.append(_row(step, conc, coalesce, sw, r))
                    console.log(" | ".join(rows[-1]))
            finally:
                srv.stop()
    table = Table(*HEAD, title=f"API layer, stand-in engine, {a.tokens} tokens/request, {os.cpu_count()} CPUs")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for conc in concs:
        off, on = results[(0.0, conc, False, None)], results[(0.0, conc, True, None)]
        console.print(f"{conc} streams: coalescing on/off tok/s {on['tok_s'] / off['tok_s']:.2f}x, "
                      f"CPU per token {on['server_cpu_per_1k'] / off['server_cpu_per_1k']:.2f}x")
    if a.markdown:
        print("| " + " | ".join(HEAD) + " |\n|" + "---|" * len(HEAD))
        for row in rows:
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
