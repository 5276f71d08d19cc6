"""Bench: `invoke kernels` no-op and one-file rebuild of the `ours` set vs GNU make (same nvcc flags).

Why this peer: a Makefile with -MD dependency files is the best a non-caching build does - it also
rebuilds one object and relinks - while a fresh build directory (what vLLM users hit after a lost
CMake cache or a random temp dir) rebuilds everything; `invoke kernels` in a fresh checkout with a
warm store does no compile at all. All runs use a private copy of tasks.py, build_config.yaml and
kernels/ (python/ symlinked) in a temp dir and a temp store, so the checkout is never touched.

    flock /tmp/mvllm-heavy.lock .venv/bin/python bench/bench_kernels_noop.py [--reps 5]
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

from minibuild.config import read_document  # noqa: E402


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"failed: {shlex.join(cmd)}\n{r.stdout}{r.stderr}")
    return dt


def makefile(spec: dict, nvcc: str) -> str:
    gencode = " ".join(f"-gencode {g}" for g in spec["gencode"])
    flags = " ".join(spec["flags"] + [f"-D{d}" for d in spec["defines"]] + [f"-I{i}" for i in spec["include_dirs"]])
    objs = " ".join(f"obj/{Path(s).stem}.o" for s in spec["sources"])
    return (f"NVCC={nvcc}\nOBJS={objs}\nout/{spec['module']}.so: $(OBJS)\n\t@mkdir -p out\n"
            f"\t$(NVCC) -shared -o $@ $(OBJS) {' '.join(spec['link_flags'])} {gencode}\n"
            f"obj/%.o: kernels/%.cu\n\t@mkdir -p obj\n\t$(NVCC) -c $< -o $@ -MD -MF $@.d {gencode} {flags}\n"
            "-include $(wildcard obj/*.d)\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--set", default="ours")
    args = ap.parse_args()
    spec = read_document(ROOT / "build_config.yaml")["kernels"][args.set]
    work = Path(tempfile.mkdtemp(prefix="bench-kernels-"))
    ours, peer = work / "ours", work / "make"
    for d in (ours, peer):
        d.mkdir()
        shutil.copytree(ROOT / "kernels", d / "kernels")
    shutil.copy(ROOT / "tasks.py", ours)
    shutil.copy(ROOT / "build_config.yaml", ours)
    os.symlink(ROOT / "python", ours / "python")
    (peer / "Makefile").write_text(makefile(spec, "nvcc"))
    env = {**os.environ, "MINI_VLLM_CACHE": str(work / "store"), "MINI_VLLM_EXT_DIR": str(work / "ext")}
    invoke = [str(Path(sys.executable).parent / "invoke"), "kernels", "--only", args.set, "--jobs", "2"]
    make = ["make", "-j2", "-s"]
    unit = next(Path(s).name for s in spec["sources"])
    rows = []

    rows.append(("cold build (empty store / empty obj dir)", timed(invoke, ours, env), timed(make, peer, env)))
    noop_o = [timed(invoke, ours, env) for _ in range(args.reps)]
    noop_p = [timed(make, peer, env) for _ in range(args.reps)]
    rows.append((f"no-op (median of {args.reps})", statistics.median(noop_o), statistics.median(noop_p)))
    one_o, one_p = [], []
    for i in range(max(1, args.reps // 2)):
        for d, out in ((ours, one_o), (peer, one_p)):
            with open(d / "kernels" / unit, "a") as f:
                f.write(f"\n// bench edit {i}\n")
        one_o.append(timed(invoke, ours, env))
        one_p.append(timed(make, peer, env))
    rows.append((f"one-file rebuild: kernels/{unit} (median of {len(one_o)})",
                 statistics.median(one_o), statistics.median(one_p)))
    # a fresh checkout / build dir: ours reuses the store, make starts from nothing
    shutil.rmtree(peer / "obj")
    shutil.rmtree(peer / "out")
    fresh = work / "fresh"
    shutil.copytree(ours, fresh, symlinks=True)
    env2 = {**env, "MINI_VLLM_EXT_DIR": str(work / "ext2")}
    rows.append(("fresh checkout/build dir, unchanged sources", timed(invoke, fresh, env2), timed(make, peer, env)))

    print(f"\nset '{args.set}': {len(spec['sources'])} units, nvcc {spec['gencode'][0]}, {os.cpu_count()} cores")
    print("| case | invoke kernels (s) | make -j2 (s) | ratio make/ours |")
    print("|---|---|---|---|")
    for name, a, b in rows:
        print(f"| {name} | {a:.2f} | {b:.2f} | {b / a:.2f}x |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
