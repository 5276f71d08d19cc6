"""HTTP path overhead: 32 concurrent streamed completions through `mini-vllm serve` vs the same load
on the in-process engine (no HTTP), both on the tiny GPT-OSS (2 layers, head_dim 64), same machine.

Both paths run the same prompts (random token ids, `minibuild.bench.load.prompts`) through the same
closed loop and are summarized by the same code as `invoke bench` (minibuild/bench/load.py), so the
HTTP row here is what `invoke bench` measures and the offline row is its peer without HTTP.
Each path first runs one full-size warm-up level (the first batch of a shape is slow: allocator,
torch kernels), then concurrency x rounds measured requests.
    .venv/bin/python bench/bench_http.py [--concurrency 32] [--input-len 32] [--tokens 64] [--rounds 3] [--device cpu] [--markdown]
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from minibuild.bench.load import (LevelResult, RequestResult, Workload, closed_loop, prompts, run_level,
                                  served_model, summarize)
from minibuild.bench.report import COLUMNS, row_cells
from mini_vllm.cli import engine_args, parse_args
from mini_vllm.entrypoints.serve import load_engine
from mini_vllm.model.tiny import write_tiny_checkpoint
from mini_vllm.sampling_params import SamplingParams

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from server_process import start_server  # noqa: E402 - the tests' server launcher


async def _engine_request(engine, w: Workload, prompt: list[int]) -> RequestResult:
    """One request on the in-process AsyncEngine, timed like the HTTP client times a stream."""
    params = SamplingParams(max_tokens=w.output_len, ignore_eos=True, temperature=w.temperature)
    t0 = time.perf_counter()
    res, last = RequestResult(ok=True, e2e=0.0), None
    async for out in engine.generate(f"bench-{uuid.uuid4().hex}", prompt, params):
        k = len(out.outputs[0].token_ids_delta)
        if not k:
            continue
        now = time.perf_counter()
        if res.ttft is None:
            res.ttft = now - t0
        elif last is not None:
            res.gaps.append(now - last)
        last, res.events, res.output_tokens = now, res.events + 1, res.output_tokens + k
    res.e2e = time.perf_counter() - t0
    return res


def bench_http(model: Path, w: Workload, conc: int, rounds: int, device: str, log_dir: str) -> LevelResult:
    srv = start_server(model, "--device", device, "--max-num-seqs", str(conc), "--disable-uvicorn-access-log",
                       "--log-level", "warning", log_dir=log_dir)
    try:
        srv.wait_ready()
        w = replace(w, model=served_model(srv.url))
        run_level(srv.url, w, conc, conc, "warmup")
        return run_level(srv.url, w, conc, conc * rounds, "HTTP (mini-vllm serve)")
    finally:
        srv.stop()


def bench_offline(model: Path, w: Workload, conc: int, rounds: int, device: str) -> LevelResult:
    args = engine_args(parse_args(["serve", str(model), "--device", device, "--max-num-seqs", str(conc)]))
    engine = load_engine(args)
    try:
        async def go() -> LevelResult:
            send = lambda p: _engine_request(engine, w, p)  # noqa: E731
            await closed_loop(send, prompts(w, conc, conc), conc)
            results, wall = await closed_loop(send, prompts(w, conc, conc * rounds), conc)
            return summarize("offline AsyncEngine (no HTTP)", w, conc, results, wall)
        return asyncio.run(go())
    finally:
        engine.shutdown()


def _server_stack() -> str:
    """What uvicorn's "auto" picks in this environment (the HTTP path's speed depends on it)."""
    import importlib.util
    has = lambda m: importlib.util.find_spec(m) is not None  # noqa: E731
    return f"{'uvloop' if has('uvloop') else 'asyncio'} + {'httptools' if has('httptools') else 'h11'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--input-len", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--markdown", action="store_true", help="also print a markdown table for docs/benchmarks.md")
    a = ap.parse_args()
    w = Workload(input_len=a.input_len, output_len=a.tokens, model="", temperature=0.8)
    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_checkpoint(Path(tmp) / "tiny-gpt-oss")
        offline = bench_offline(model, w, a.concurrency, a.rounds, a.device)
        http = bench_http(model, w, a.concurrency, a.rounds, a.device, tmp)
    for r in (http, offline):
        if r.errors:
            raise SystemExit(f"{r.label}: {r.errors} of {r.requests} requests failed, first: {r.first_error}")
    table = Table(*COLUMNS, title=f"{a.concurrency} concurrent x {a.input_len} in / {a.tokens} out x {a.rounds} rounds, "
                  f"tiny GPT-OSS, {a.device}")
    for r in (http, offline):
        table.add_row(*row_cells(r))
    console = Console()
    console.print(table)
    ratio = http.output_tok_s / offline.output_tok_s
    console.print(f"HTTP / offline throughput ratio: {ratio:.2f}; uvicorn loop/http: {_server_stack()}")
    if a.markdown:
        print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS))
        for r in (http, offline):
            print("| " + " | ".join(row_cells(r)) + " |")
        print(f"\nHTTP / offline output tok/s ratio: **{ratio:.2f}** (uvicorn: {_server_stack()})")


if __name__ == "__main__":
    main()
