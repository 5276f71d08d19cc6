"""`invoke bench` A/B of two `mini-vllm serve` settings on the tiny GPT-OSS, both servers started here.

Starts server A and server B (same tiny checkpoint, different flags) on free 127.0.0.1 ports, waits until
both answer, then runs exactly what `invoke bench --url A --url-b B` runs (minibuild.bench.run_bench):
results.md, results.json, throughput.png, latency.png in --out.
    .venv/bin/python bench/bench_ab.py --flags-a "--max-num-seqs 64" --flags-b "--max-num-seqs 8" \\
        [--concurrency 1,8,64] [--input-len 128] [--output-len 64] [--requests 0] [--rounds 3] [--out build/bench/ab]
"""
from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

from minibuild.bench import parse_levels, run_bench
from minibuild.bench.load import Workload
from mini_vllm.model.tiny import write_tiny_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from server_process import start_server  # noqa: E402 - the tests' server launcher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flags-a", default="--max-num-seqs 64")
    ap.add_argument("--flags-b", default="--max-num-seqs 8")
    ap.add_argument("--concurrency", default="1,8,64")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--requests", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="build/bench/ab")
    a = ap.parse_args()
    label = lambda flags: flags.strip().lstrip("-").replace(" ", "-") or "default"  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_checkpoint(Path(tmp) / "tiny-gpt-oss")
        servers = [start_server(model, *shlex.split(f), "--disable-uvicorn-access-log", log_dir=tmp)
                   for f in (a.flags_a, a.flags_b)]
        try:
            for s in servers:
                s.wait_ready()
            run_bench([(label(a.flags_a), servers[0].url), (label(a.flags_b), servers[1].url)],
                      parse_levels(a.concurrency), Workload(input_len=a.input_len, output_len=a.output_len),
                      Path(a.out), a.requests, rounds=a.rounds)
        finally:
            for s in servers:
                s.stop()


if __name__ == "__main__":
    main()
