"""`invoke bench`: load one or two OpenAI-compatible servers (A/B) at several concurrency levels and
write what a reader needs to compare them: results.md, results.json, throughput.png, latency.png.

The load itself lives in load.py (shared with bench/bench_http.py and the device benchmarks), the
table in report.py, the pictures in plots.py; this module only runs levels in order (A then B at each
level, so slow drift of a shared machine hits both) and shows progress.
"""
from __future__ import annotations

import asyncio
import platform
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

from minibuild import ui
from minibuild.bench.load import (BenchError, LevelResult, RequestResult, Workload, measure, run_level,
                                  served_model, summarize)


def parse_levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in str(text).replace(" ", "").split(",") if x]
    except ValueError:
        raise BenchError(f"--concurrency {text!r}: give comma-separated positive integers, e.g. 1,8,64") from None
    if not levels or min(levels) < 1:
        raise BenchError(f"--concurrency {text!r}: give comma-separated positive integers, e.g. 1,8,64")
    return levels


def requests_for(concurrency: int, requests: int) -> int:
    """Requests per level: --requests, or 2 per slot and at least 8."""
    return max(requests, concurrency) if requests else max(2 * concurrency, 8)


def _check(w: Workload) -> None:
    if w.input_len < 1 or w.output_len < 1:
        raise BenchError(f"--input-len and --output-len must be >= 1 (got {w.input_len}, {w.output_len})")


def run_bench(targets: list[tuple[str, str]], levels: list[int], workload: Workload, out: Path,
              requests: int = 0, warmup: int = 2, rounds: int = 1) -> list[LevelResult]:
    """Run every level against every (label, url); write results and plots into out. Raises BenchError.
    With rounds > 1 each level runs A, B, A, B, ... (fresh prompts per round) and the rounds are pooled:
    a shared machine's slow drift then hits both sides alike."""
    if rounds < 1:
        raise BenchError(f"--rounds {rounds}: at least one round")
    _check(workload)
    models = {label: workload.model or served_model(url, workload.api_key) for label, url in targets}
    rows: list[LevelResult] = []
    for label, url in targets:
        if warmup:
            w = replace(workload, model=models[label], output_len=min(8, workload.output_len), seed=workload.seed + 99)
            r = run_level(url, w, min(warmup, 8), warmup, label)
            if r.errors == r.requests:
                raise BenchError(f"{label} ({url}): every warm-up request failed: {r.first_error}")
    for conc in levels:
        n = requests_for(conc, requests)
        pooled: dict[str, tuple[list[RequestResult], list[float]]] = {label: ([], []) for label, _ in targets}
        for r in range(rounds):
            for label, url in targets:
                w = replace(workload, model=models[label], seed=workload.seed + r)
                with ui.progress(f"{label} c={conc}" + (f" round {r + 1}/{rounds}" if rounds > 1 else ""), n) as bar:
                    results, wall = asyncio.run(measure(url, w, conc, n, on_done=lambda _r: bar.advance()))
                pooled[label][0].extend(results)
                pooled[label][1].append(wall)
        for label, _ in targets:
            row = summarize(label, workload, conc, pooled[label][0], sum(pooled[label][1]))
            rows.append(row)
            ui.info(f"{label:>8} c={conc:<4} {row.output_tok_s:9,.0f} out tok/s  TTFT p50 {row.ttft_ms['p50']:8.1f} ms  "
                    f"ITL p50 {row.itl_ms['p50']:7.2f} ms  e2e p50 {row.e2e_ms['p50']:8.0f} ms  "
                    f"errors {row.errors}/{row.requests}")
    write_all(out, rows, targets, models, workload)
    return rows


def write_all(out: Path, rows: list[LevelResult], targets: list[tuple[str, str]], models: dict[str, str],
              workload: Workload) -> None:
    from minibuild.bench.plots import write_plots
    from minibuild.bench.report import write_results

    desc = (f"{workload.input_len} prompt tokens (random ids) / {workload.output_len} output tokens per request, "
            f"streamed /v1/completions, temperature {workload.temperature}"
            + (", ignore_eos" if workload.ignore_eos else ""))
    meta = {"title": " vs ".join(label for label, _ in targets) + " - invoke bench",
            "workload": desc, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "host": f"{platform.node()} ({platform.machine()}, {_cpus()} CPUs)",
            "command": " ".join(shlex.quote(a) for a in ["invoke", *sys.argv[1:]]) if "invoke" in sys.argv[0] else
            " ".join(shlex.quote(a) for a in sys.argv),
            "targets": [{"label": label, "url": url, "model": models[label]} for label, url in targets]}
    md, data = write_results(out, rows, meta)
    pngs = write_plots(out, rows, [label for label, _ in targets], f"{workload.input_len} in / {workload.output_len} out")
    ui.out(md.read_text())
    ui.info(f"wrote {md}, {data}, " + ", ".join(str(p) for p in pngs))


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)


def bench_command(url: str, url_b: str, label_a: str, label_b: str, concurrency: str, input_len: int,
                  output_len: int, requests: int, out: str, model: str, api_key: str | None, warmup: int,
                  temperature: float, timeout: float, rounds: int = 1) -> bool:
    """`invoke bench`: False (after a one-line error) when the benchmark cannot run."""
    try:
        if not url:
            raise BenchError("--url is required: the base URL of a running server, e.g. http://127.0.0.1:8000")
        if url_b and label_a == label_b:
            raise BenchError(f"--label-a and --label-b are both {label_a!r}: give A and B different names")
        targets = [(label_a, url)] + ([(label_b, url_b)] if url_b else [])
        w = Workload(input_len=int(input_len), output_len=int(output_len), model=model, temperature=float(temperature),
                     timeout_s=float(timeout), api_key=api_key or None)
        rows = run_bench(targets, parse_levels(concurrency), w, Path(out), int(requests), int(warmup), int(rounds))
    except BenchError as exc:
        ui.error(str(exc))
        return False
    return not any(r.errors == r.requests for r in rows)
