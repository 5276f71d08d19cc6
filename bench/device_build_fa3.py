"""On the GPU machine: cold `invoke kernels` (FA3 GPT-OSS subset + ours) vs compiling what vLLM compiles.

Run by bench/device_build_fa3.sh (no invoke needed there: the library is called directly). Steps:
1. cold build_kernels() into a fresh store from the carried source mirror, timed; then a no-op, timed;
2. peer: a deterministic sample of N other FA3 `hopper/instantiations/*_sm90.cu` units (every k-th of
   the sorted list minus ours) compiled with the SAME nvcc command line builder, flags and parallelism;
   the full set's time is extrapolated as  wall(sample) * total_units / N  (units are independent
   and all of similar weight - measured 128-256 s each - so wall time scales with the count when
   N >= 2 x jobs);
3. a table: ours vs the extrapolated full FA3 sm90 build.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

from minibuild.compile import PathMap, nvcc_command  # noqa: E402
from minibuild.config import load_config  # noqa: E402
from minibuild.kernels import build_kernels  # noqa: E402
from minibuild.store import Store  # noqa: E402
from minibuild.toolchain import detect  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mirror", default=str(ROOT / ".carry" / "mirror"))
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--sample", type=int, default=16, help="0: skip the peer")
    ap.add_argument("--ext-dir", default="", help="install the modules here (default: a temp dir)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fa3-bench-"))
    os.environ["MINI_VLLM_CACHE"] = str(work / "store")
    os.environ["MINI_VLLM_EXT_DIR"] = args.ext_dir or str(work / "ext")
    cfg = load_config(ROOT / "build_config.yaml")

    t0 = time.perf_counter()
    ok = build_kernels(cfg, offline=True, jobs=args.jobs, mirror=args.mirror)
    cold = time.perf_counter() - t0
    if not ok:
        raise SystemExit("cold build failed")
    t0 = time.perf_counter()
    build_kernels(cfg, offline=True, jobs=args.jobs, mirror=args.mirror)
    noop = time.perf_counter() - t0

    print(f"cold build {cold:.0f} s, no-op {noop:.2f} s")
    if args.sample == 0:
        return
    store = Store.from_config(cfg.store)
    tc = detect(cfg.toolchain, store)
    fa3 = cfg.kernels["fa3"]
    pm = PathMap(ROOT.resolve(), {n: store.tree_dir(cfg.sources[n].tree_id) for n in fa3.sources_used})
    inst = pm.trees["fa3"] / "hopper" / "instantiations"
    ours = {Path(u).name for u in fa3.units}
    others = sorted(p.name for p in inst.glob("*_sm90.cu") if p.name not in ours)
    step = max(1, len(others) // args.sample)
    sample = others[::step][:args.sample]
    peer_set = replace(fa3, units=tuple(f"@fa3/hopper/instantiations/{u}" for u in sample))
    outdir = work / "peer"
    outdir.mkdir()

    def one(unit: str) -> float:
        s = time.perf_counter()
        cmd = nvcc_command(tc, pm, peer_set, unit, outdir / (Path(unit).stem + ".o"), outdir / (Path(unit).stem + ".d"))
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            print(f"peer unit {unit} failed:\n{r.stderr[-2000:]}")
        return time.perf_counter() - s

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        each = list(pool.map(one, peer_set.units))
    peer_wall = time.perf_counter() - t0
    full = peer_wall * (len(others) + len(ours)) / len(sample)

    n_ours = len(fa3.units) + (len(cfg.kernels["ours"].units) if "ours" in cfg.kernels else 0)
    print(f"\nmachine: {os.cpu_count()} cores, nvcc {tc.nvcc_version}, jobs {args.jobs}")
    print("| build | units | wall (s) |")
    print("|---|---|---|")
    print(f"| invoke kernels cold (FA3 GPT-OSS subset + ours) | {n_ours} | {cold:.0f} |")
    print(f"| invoke kernels no-op | {n_ours} | {noop:.2f} |")
    print(f"| peer sample: {len(sample)} other FA3 sm90 units, same flags | {len(sample)} | {peer_wall:.0f} "
          f"(each {min(each):.0f}-{max(each):.0f}) |")
    print(f"| peer extrapolated: all {len(others) + len(ours)} hopper/instantiations/*_sm90.cu | "
          f"{len(others) + len(ours)} | {full:.0f} |")
    print(f"ratio full/ours cold: {full / cold:.1f}x; method: wall(sample) x total/sample at equal parallelism")


if __name__ == "__main__":
    main()
