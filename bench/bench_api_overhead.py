#!/usr/bin/env python3
"""HTTP/SSE layer cost at 1 / 64 / 256 concurrent streams, with the model replaced by a stand-in.

Why: the engine's GPU step at 256 streams is ~20 ms on the H100 but clients saw ~53 ms between tokens;
this isolates what the API path (AsyncEngine hand-off, SSE generators, uvicorn, GIL) adds. The server
is `mini-vllm serve` with `BenchFakeStepEngine` behind the real AsyncEngine (bench/api_overhead_server.py);
clients are httpx streaming /v1/completions in a separate process (their CPU is not the server's).

Reported per run: output tok/s delivered, server CPU-seconds per 1000 streamed tokens (the stand-in's
own step work subtracted), tokens per SSE event, client-side per-token latency p50/p99, and with a
simulated GPU step (`--step-ms`, slept with the GIL released) how much each engine step grows beyond it.
Server and client run on disjoint CPUs. Peers in the same script: stream coalescing off
(MINI_VLLM_STREAM_COALESCE=0) vs on, outputs handed over at once vs from the engine's gpu_wait_hook
(MINI_VLLM_DELIVER_IN_GPU_WAIT), gc.freeze() after start-up or not (MINI_VLLM_GC_FREEZE), uvloop vs
asyncio's own loop, and the GIL switch
interval 5 ms (Python's default) vs a shorter one (MINI_VLLM_SWITCH_INTERVAL_MS). Each cell is the
median of --repeat runs (the machine is shared; single runs are noisy).

    .venv/bin/python bench/bench_api_overhead.py [--tokens 128] [--conc 1,64,256] [--step-ms 20] [--repeat 3]
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "bench"))

from api_overhead_server import TOKEN_CHARS  # noqa: E402
sys.path.insert(0, str(ROOT / "tests"))
from server_process import ServerProcess, free_port  # noqa: E402

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


def cpu_split() -> tuple[set[int], set[int]]:
    """Server CPUs, client CPUs: disjoint, so the client's parsing does not steal the server's core
    (one core serves a GIL-bound server on a small box; a quarter of them on a big one)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return set(cpus), set(cpus)
    k = max(1, len(cpus) // 4)
    return set(cpus[:k]), set(cpus[k:])


def _pinned(cpus: set[int]):
    return lambda: os.sched_setaffinity(0, cpus)


def run_client(url: str, conc: int, tokens: int) -> dict[str, Any]:
    """Drive `conc` streams from a separate process (on the client CPUs); returns its measurements."""
    out = subprocess.run([sys.executable, __file__, "--client", url, "--conc", str(conc), "--tokens", str(tokens)],
                         capture_output=True, text=True, timeout=900, preexec_fn=_pinned(cpu_split()[1]))
    if out.returncode:
        raise RuntimeError(f"client failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- one server configuration ------------------------------------------------------------------
def start(model: Path, log_dir: str, step_ms: float, host_ms: float, coalesce: bool, switch_ms: float,
          loop: str, defer: bool, freeze: bool, max_seqs: int, gil_releases: int) -> ServerProcess:
    port = free_port()
    log_path = Path(log_dir) / f"server-{port}.log"
    env = dict(os.environ, MINI_VLLM_STREAM_COALESCE="1" if coalesce else "0",
               MINI_VLLM_SWITCH_INTERVAL_MS=str(switch_ms), MINI_VLLM_DELIVER_IN_GPU_WAIT="1" if defer else "0",
               MINI_VLLM_GC_FREEZE="1" if freeze else "0")
    cmd = [sys.executable, str(ROOT / "bench" / "api_overhead_server.py"), str(model), "--step-ms", str(step_ms),
           "--host-ms", str(host_ms),
           "--gil-releases", str(gil_releases),
           *(["--no-uvloop"] if loop == "asyncio" else []),
           "--", "--host", "127.0.0.1", "--port", str(port), "--max-num-seqs", str(max_seqs),
           "--max-waiting", "4096", "--disable-uvicorn-access-log", "--log-level", "warning"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_pinned(cpu_split()[0]))
    srv = ServerProcess(proc, f"http://127.0.0.1:{port}", log_path)
    srv.wait_ready(120)
    return srv


def measure_once(srv: ServerProcess, conc: int, tokens: int, step_ms: float) -> dict[str, Any]:
    """One client run; `step_ms`: the stand-in's step (sleep + host work), subtracted from each step interval."""
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
               step_extra_mean=statistics.fmean(extra) if extra else float("nan"),
               step_extra_max=extra[-1] if extra else float("nan"))
    return res


# ---- per-event encoding, in-process -------------------------------------------------------------
def encode_peer(n: int = 100_000) -> tuple[float, float]:
    """µs per text_completion chunk: the general encoder (json.dumps of dict(head, choices=...), as the
    server did before) vs the precomputed prefix + C string encoder (sse.Chunks); outputs must match."""
    import timeit
    from mini_vllm.api import sse

    head = {"id": sse.new_id("cmpl"), "object": "text_completion", "created": sse.now(), "model": "gpt-oss-20b"}
    breakers = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})

    def general(text: str) -> bytes:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": None, "stop_reason": None}
        return b"data: " + json.dumps(dict(head, choices=[choice]), separators=(",", ":"),
                                      ensure_ascii=False).translate(breakers).encode() + b"\n\n"

    chunks = sse.Chunks(head)
    fast = lambda text: chunks.event([chunks.text_choice(0, text, None, None)])  # noqa: E731
    if general(" hello\u2028") != fast(" hello\u2028"):
        raise RuntimeError("sse.Chunks differs from the general encoding")
    return tuple(timeit.timeit(lambda: f(" hello"), number=n) / n * 1e6 for f in (general, fast))  # type: ignore


# ---- driver ------------------------------------------------------------------------------------
HEAD = ["GPU+host ms", "streams", "coalesce", "switch ms", "loop", "deliver in GPU wait", "gc.freeze", "output tok/s",
        "server CPU s / 1k tok", "tok / event",
        "ITL p50 ms", "ITL p99 ms", "step +ms p50", "step +ms mean", "step +ms max"]


def _row(step: str, conc: int, coalesce: bool, switch: float, loop: str, defer: bool, freeze: bool,
         r: dict[str, Any]) -> list[str]:
    return [step, str(conc), "on" if coalesce else "off", f"{switch:g}", loop, "yes" if defer else "no",
            "yes" if freeze else "no",
            f"{r['tok_s']:,.0f}", f"{r['server_cpu_per_1k']:.3f}", f"{r['tok_per_event']:.2f}",
            f"{r['itl_p50'] * 1000:.2f}", f"{r['itl_p99'] * 1000:.2f}",
            f"{r['step_extra_p50']:.2f}" if step != "0" else "-",
            f"{r['step_extra_mean']:.2f}" if step != "0" else "-",
            f"{r['step_extra_max']:.2f}" if step != "0" else "-"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)
    ap.add_argument("--tokens", type=int, default=128, help="tokens per request")
    ap.add_argument("--conc", default="1,64,256", help="concurrent streams (comma list) for the no-sleep runs")
    ap.add_argument("--step-ms", type=float, default=20.0, help="simulated GPU step for the latency runs")
    ap.add_argument("--host-ms", type=float, default=5.0,
                    help="engine Python work per simulated step, holding the GIL (between the releases)")
    ap.add_argument("--gil-releases", type=int, default=4, help="short GIL releases per simulated step")
    ap.add_argument("--step-conc", type=int, default=256, help="streams for the simulated-step runs")
    ap.add_argument("--switch-ms", default="5,1", help="GIL switch intervals (ms) for the simulated-step runs; "
                    "the first is also used for the no-sleep runs")
    ap.add_argument("--repeat", type=int, default=3, help="runs per cell (the median is reported)")
    a = ap.parse_args()
    if a.client:
        print(json.dumps(asyncio.run(_client(a.client, int(a.conc), a.tokens))))
        return
    from mini_vllm.model.tiny import write_tiny_checkpoint

    concs = [int(c) for c in a.conc.split(",")]
    switches = [float(x) for x in a.switch_ms.split(",")]
    # (GPU ms, host ms, coalesce, switch ms, loop, deliver in the GPU wait, gc.freeze after start-up)
    configs = [(0.0, 0.0, coalesce, switches[0], "auto", False, True) for coalesce in (False, True)]
    step, host = a.step_ms, a.host_ms
    configs += [(step, host, False, switches[0], "auto", False, False)]      # the server as it was before
    configs += [(step, host, True, switches[0], "auto", False, True)]
    configs += [(step, host, True, sw, "auto", True, True) for sw in switches]
    configs += [(step, host, True, switches[0], "auto", True, False)]         # peer: no gc.freeze
    configs += [(step, host, True, switches[0], "asyncio", True, True)]       # peer: without uvloop
    cells = [(cfg, conc) for cfg in configs for conc in (concs if cfg[0] == 0 else [a.step_conc])]
    runs: dict[tuple, list[dict[str, Any]]] = {cell: [] for cell in cells}
    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_checkpoint(Path(tmp) / "tiny-gpt-oss")
        servers: dict[tuple, ServerProcess] = {}
        try:
            for cfg in configs:          # all up at once (idle ones cost nothing), measured round-robin so
                servers[cfg] = start(model, tmp, *cfg, max(concs + [a.step_conc]),  # drift hits all alike
                                     a.gil_releases)
                run_client(servers[cfg].url, 16, 8)                        # warm-up
            for rep in range(a.repeat):
                for cfg, conc in cells:
                    runs[(cfg, conc)].append(measure_once(servers[cfg], conc, a.tokens, cfg[0] + cfg[1]))
                print(f"round {rep + 1}/{a.repeat} done", file=sys.stderr, flush=True)
        finally:
            for srv in servers.values():
                srv.stop()
    results = {cell: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for cell, rs in runs.items()}
    rows = [_row(f"{cfg[0]:g}+{cfg[1]:g}" if cfg[0] else "0", conc, *cfg[2:], results[(cfg, conc)])
            for cfg, conc in cells]
    srv_cpus, cli_cpus = cpu_split()
    slow, fast = encode_peer()
    print(f"one chunk's encoding: general json.dumps {slow:.2f} us, sse.Chunks {fast:.2f} us ({slow / fast:.1f}x)")
    import importlib.util
    auto = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio (uvloop not installed)"
    print(f"API layer, stand-in engine, {a.tokens} tokens/request, median of {a.repeat}; server on "
          f"{len(srv_cpus)} CPU(s), client on {len(cli_cpus)}; loop 'auto' = {auto}\n")
    print("| " + " | ".join(HEAD) + " |\n|" + "---|" * len(HEAD))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    for conc in concs:
        off = results[((0.0, 0.0, False, switches[0], "auto", False, True), conc)]
        on = results[((0.0, 0.0, True, switches[0], "auto", False, True), conc)]
        print(f"{conc} streams: coalescing on/off tok/s {on['tok_s'] / off['tok_s']:.2f}x, "
                      f"CPU per token {on['server_cpu_per_1k'] / off['server_cpu_per_1k']:.2f}x")


if __name__ == "__main__":
    main()
