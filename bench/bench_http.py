"""HTTP path overhead: 32 concurrent streamed completions through `mini-vllm serve` vs the same load
on the in-process engine (no HTTP), both on the tiny GPT-OSS (2 layers, head_dim 64), same machine.

Reports output tok/s, TTFT p50/p99 and ITL p50/p99 for each, and the HTTP/offline throughput ratio.
Each path first runs one full-size warm-up round (the first batch of a shape is slow: allocator,
torch kernels), then --rounds measured rounds; the numbers pool all measured rounds.
    .venv/bin/python bench/bench_http.py [--concurrency 32] [--tokens 64] [--rounds 3] [--device cpu] [--markdown]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from mini_vllm.cli import engine_args, parse_args
from mini_vllm.entrypoints.serve import load_engine
from mini_vllm.model.tiny import write_tiny_checkpoint
from mini_vllm.sampling_params import SamplingParams

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from server_process import start_server  # noqa: E402 - the tests' server launcher

PROMPT = "Once upon a time, in a small village by the sea, there lived an old fisherman"


@dataclass
class Run:
    name: str
    wall: float
    tokens: int
    ttft: list[float]
    itl: list[float]

    def row(self) -> list[str]:
        q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(p * len(xs)))] * 1000 if xs else float("nan")  # noqa: E731
        return [self.name, f"{self.tokens / self.wall:,.0f}", f"{q(self.ttft, .5):.1f}", f"{q(self.ttft, .99):.1f}",
                f"{q(self.itl, .5):.2f}", f"{q(self.itl, .99):.2f}", f"{self.wall:.2f}"]


async def _timed(stream) -> tuple[int, float | None, list[float]]:
    """Consume (token_count_delta) items; returns tokens, ttft, inter-token gaps (per token)."""
    t0 = time.monotonic()
    last, ttft, gaps, n = None, None, [], 0
    async for k in stream:
        if not k:
            continue
        now = time.monotonic()
        if last is None:
            ttft = now - t0
        else:
            gaps += [(now - last) / k] * k
        last, n = now, n + k
    return n, ttft, gaps


async def _http_stream(client: httpx.AsyncClient, tokens: int):
    body = {"prompt": PROMPT, "max_tokens": tokens, "ignore_eos": True, "stream": True, "temperature": 0.8,
            "stream_options": {"include_usage": True}}
    chunks = 0
    async with client.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if chunk["choices"]:   # one chunk per engine step, or several steps' tokens when the
                    chunks += 1        # server coalesced a backlog (then the gap is per event, not per token)
                    yield 1
                elif chunk.get("usage"):
                    got = chunk["usage"]["completion_tokens"]
                    if got != tokens or not 0 < chunks <= tokens:
                        raise RuntimeError(f"expected {tokens} tokens, usage says {got} in {chunks} chunks")


async def _engine_stream(engine, i: int, prompt_ids: list[int], tokens: int):
    params = SamplingParams(max_tokens=tokens, ignore_eos=True, temperature=0.8)
    async for out in engine.generate(f"bench-{i}-{uuid.uuid4().hex}", prompt_ids, params):
        yield len(out.outputs[0].token_ids_delta)


async def _load(make_streams, name: str, rounds: int = 1) -> Run:
    run = Run(name, 0.0, 0, [], [])
    for _ in range(rounds):
        t0 = time.monotonic()
        results = await asyncio.gather(*(_timed(s) for s in make_streams()))
        run.wall += time.monotonic() - t0
        run.tokens += sum(r[0] for r in results)
        run.ttft += [r[1] for r in results if r[1] is not None]
        run.itl += [g for r in results for g in r[2]]
    return run


def bench_http(model: Path, conc: int, tokens: int, rounds: int, device: str, log_dir: str) -> Run:
    srv = start_server(model, "--device", device, "--max-num-seqs", str(conc), "--disable-uvicorn-access-log",
                       "--log-level", "warning", log_dir=log_dir)
    try:
        srv.wait_ready()

        async def go() -> Run:
            limits = httpx.Limits(max_connections=conc * 2)
            async with httpx.AsyncClient(base_url=srv.url, timeout=300, limits=limits) as c:
                await _load(lambda: [_http_stream(c, tokens) for _ in range(conc)], "warmup")
                return await _load(lambda: [_http_stream(c, tokens) for _ in range(conc)], "HTTP (mini-vllm serve)",
                                   rounds)
        return asyncio.run(go())
    finally:
        srv.stop()


def bench_offline(model: Path, conc: int, tokens: int, rounds: int, device: str) -> Run:
    args = engine_args(parse_args(["serve", str(model), "--device", device, "--max-num-seqs", str(conc)]))
    engine = load_engine(args)
    try:
        ids = engine.tokenizer.encode(PROMPT, add_special_tokens=False)

        async def go() -> Run:
            await _load(lambda: [_engine_stream(engine, i, ids, tokens) for i in range(conc)], "warmup")
            return await _load(lambda: [_engine_stream(engine, i, ids, tokens) for i in range(conc)],
                               "offline AsyncEngine (no HTTP)", rounds)
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
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--markdown", action="store_true", help="also print a markdown table for docs/benchmarks.md")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_checkpoint(Path(tmp) / "tiny-gpt-oss")
        offline = bench_offline(model, a.concurrency, a.tokens, a.rounds, a.device)
        http = bench_http(model, a.concurrency, a.tokens, a.rounds, a.device, tmp)
    head = ["path", "output tok/s", "TTFT p50 ms", "TTFT p99 ms", "ITL p50 ms", "ITL p99 ms", "wall s"]
    table = Table(*head, title=f"{a.concurrency} concurrent x {a.tokens} tokens x {a.rounds} rounds, tiny GPT-OSS, "
                  f"{a.device}")
    for r in (http, offline):
        table.add_row(*r.row())
    console = Console()
    console.print(table)
    ratio = (http.tokens / http.wall) / (offline.tokens / offline.wall)
    console.print(f"HTTP / offline throughput ratio: {ratio:.2f}; uvicorn loop/http: {_server_stack()}")
    if a.markdown:
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for r in (http, offline):
            print("| " + " | ".join(r.row()) + " |")
        print(f"\nHTTP / offline output tok/s ratio: **{ratio:.2f}** (uvicorn: {_server_stack()})")


if __name__ == "__main__":
    main()
