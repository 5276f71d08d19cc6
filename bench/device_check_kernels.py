#!/usr/bin/env python3
"""GPU check of mini-vLLM's CUDA kernels and FA3 subset: correctness vs the torch references, then timing.

Why a script (run by the lead on an H100, never in CI): nothing CUDA runs on the build machines. For each
op and several shapes (gpt-oss-20b's included: hidden 2880, 64 q / 8 kv heads, head_dim 64, 32 experts)
it draws fresh random bf16 inputs, poisons the outputs (NaN), runs our kernel through mini_vllm.ops,
compares with the torch reference on the same GPU (relative L2 error; bf16 tolerance 1e-2, exact where the
op is exact), then times both with CUDA events (median) - the reference is the peer, the ratio is printed.
A failing op is reported and the script goes on; the exit code is 1 if anything failed.

    python bench/device_check_kernels.py [--ext-dir build/ext] [--iters 50] [--json $OUT/kernels.json]

The modules come from `invoke kernels` (build/ext/*.so, or $MINI_VLLM_EXT_DIR); they are plain C-ABI
shared objects, so ones built on the CPU machine run here as is.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import traceback
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mini_vllm import ops  # noqa: E402
from mini_vllm.ops import attention_fa3, ext, reference, selfcheck  # noqa: E402
from mini_vllm.ops.reference import paged_attention as paged_reference  # noqa: E402

DEV = "cuda"
TOL = selfcheck.TOL
ROWS: list[dict] = []
rel_l2 = selfcheck.rel_l2


def bench(fn: Callable[[], object], iters: int) -> float:
    """Median microseconds per call."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) * 1000.0)
    return statistics.median(times)


def bench_graph(fn: Callable[[], object], iters: int, calls: int = 20) -> float:
    """Median microseconds per call, `calls` calls captured in one CUDA graph (launch latency as in decode)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()                                   # warm-up outside capture (lazy init, cuBLAS handles)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return bench(graph.replay, iters) / calls


def check(op: str, case: str, run: Callable[[], float], time_ours: Callable[[], object] | None,
          time_ref: Callable[[], object] | None, iters: int, tol: float = TOL,
          timer: Callable[[Callable[[], object], int], float] = bench) -> None:
    row = {"op": op, "case": case}
    try:
        err = run()
        row.update(err=err, ok=err <= tol)
        if time_ours is not None and DEV == "cuda":
            row["us_ours"] = timer(time_ours, iters)
            row["us_ref"] = timer(time_ref, iters)
            row["speedup"] = row["us_ref"] / row["us_ours"]
    except Exception as exc:  # noqa: BLE001 - one op's failure must not stop the others
        row.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
    ROWS.append(row)
    status = "ok" if row["ok"] else "FAIL"
    timing = (f"ours {row['us_ours']:9.1f} us  torch {row['us_ref']:9.1f} us  x{row['speedup']:6.2f}"
              if "us_ours" in row else row.get("error", ""))
    print(f"{status:4} {op:18} {case:34} err {row.get('err', float('nan')):.2e}  {timing}", flush=True)


def bf(*shape, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, device=DEV) * scale).to(torch.bfloat16)


def nan_like(t: torch.Tensor) -> torch.Tensor:
    return torch.full_like(t, float("nan"))


def check_norms(iters: int) -> None:
    for rows, hidden in [(1, 2880), (64, 2880), (4096, 2880), (7, 4096)]:
        x, w = bf(rows, hidden, scale=3), bf(hidden)
        out = nan_like(x)

        def run_norm() -> float:
            return rel_l2(ops.rms_norm(x, w, out=out), reference.rms_norm(x, w))
        check("rms_norm", f"{rows}x{hidden}", run_norm, lambda: ops.rms_norm(x, w, out=out),
              lambda: reference.rms_norm(x, w), iters)

        res = bf(rows, hidden)

        def run_fused() -> float:
            xa, ra, xb, rb = x.clone(), res.clone(), x.clone(), res.clone()
            ops.fused_add_rms_norm(xa, ra, w)
            reference.fused_add_rms_norm(xb, rb, w)
            return max(rel_l2(xa, xb), rel_l2(ra, rb))
        xs, rs = x.clone(), res.clone()
        check("fused_add_rms_norm", f"{rows}x{hidden}", run_fused, lambda: ops.fused_add_rms_norm(xs, rs, w),
              lambda: reference.fused_add_rms_norm(xs, rs, w), iters)


def check_rope(iters: int) -> None:
    cache = ops.cos_sin_cache(131072, device=DEV)
    for t in (1, 64, 2048):
        hq, hk, d = 64, 8, 64
        positions = torch.randint(0, 131072, (t,), device=DEV)
        qkv = bf(t, (hq + 2 * hk) * d)

        def views(buf):
            return buf[:, : hq * d].view(t, hq, d), buf[:, hq * d:(hq + hk) * d].view(t, hk, d)

        def run() -> float:
            a, b = qkv.clone(), qkv.clone()
            ops.apply_rope(*views(a), positions, cache)
            reference.apply_rope(*views(b), positions, cache)
            return rel_l2(a, b)
        qa, ka = views(qkv.clone())
        check("apply_rope", f"T={t} 64q/8kv strided", run, lambda: ops.apply_rope(qa, ka, positions, cache),
              lambda: reference.apply_rope(qa, ka, positions, cache), iters)


def check_kv_cache(iters: int) -> None:
    for t, blocks in [(1, 1024), (256, 1024), (4096, 4096)]:
        hk, d, bs = 8, 64, 16
        qkv = bf(t, (64 + 2 * hk) * d)
        key, value = qkv[:, 64 * d:(64 + hk) * d].view(t, hk, d), qkv[:, (64 + hk) * d:].view(t, hk, d)
        slots = torch.randperm(blocks * bs, device=DEV)[:t]
        slots[::7] = -1

        def run() -> float:
            kc = torch.full((blocks, bs, hk, d), float("nan"), device=DEV, dtype=torch.bfloat16)
            vc, kr, vr = kc.clone(), kc.clone(), kc.clone()
            ops.write_kv_cache(key, value, kc, vc, slots)
            reference.write_kv_cache(key, value, kr, vr, slots)
            same = torch.equal(kc.nan_to_num(7.0), kr.nan_to_num(7.0)) and torch.equal(vc.nan_to_num(7.0),
                                                                                          vr.nan_to_num(7.0))
            return 0.0 if same else math.inf  # untouched slots must stay poisoned, written ones exact
        kc = torch.zeros(blocks, bs, hk, d, device=DEV, dtype=torch.bfloat16)
        vc = kc.clone()
        check("write_kv_cache", f"T={t} blocks={blocks}", run, lambda: ops.write_kv_cache(key, value, kc, vc, slots),
              lambda: reference.write_kv_cache(key, value, kc, vc, slots), iters, tol=0.0)


def check_swiglu(iters: int) -> None:
    for rows in (1, 128, 8192):
        gu = bf(rows, 2 * 2880, scale=4)
        out = torch.full((rows, 2880), float("nan"), device=DEV, dtype=torch.bfloat16)
        check("swiglu_clamped", f"{rows}x5760", lambda: rel_l2(ops.swiglu_clamped(gu, out=out),
                                                                reference.swiglu_clamped(gu)),
              lambda: ops.swiglu_clamped(gu, out=out), lambda: reference.swiglu_clamped(gu), iters)


def check_mxfp4(iters: int) -> None:
    for e in (1, 32):  # gpt-oss-20b gate_up: [E, 5760, 90, 16]
        blocks = torch.randint(0, 256, (e, 5760, 90, 16), dtype=torch.uint8, device=DEV)
        scales = torch.randint(100, 140, (e, 5760, 90), dtype=torch.uint8, device=DEV)
        out = torch.full((e, 5760, 2880), float("nan"), device=DEV, dtype=torch.bfloat16)

        def run() -> float:
            return 0.0 if torch.equal(ops.dequant_mxfp4(blocks, scales, out=out),
                                      reference.dequant_mxfp4(blocks, scales)) else math.inf
        check("dequant_mxfp4", f"E={e} gate_up", run, lambda: ops.dequant_mxfp4(blocks, scales, out=out),
              lambda: reference.dequant_mxfp4(blocks, scales), iters, tol=0.0)


def check_routing(iters: int) -> None:
    for t, e in [(1, 32), (256, 32), (4096, 128)]:
        logits = bf(t, e, scale=2)
        out = (torch.full((t, 4), -1, dtype=torch.int32, device=DEV), torch.full((t, 4), float("nan"), device=DEV))

        def run() -> float:
            idx, w = ops.route_topk(logits, 4, out=out)
            ridx, rw = reference.route_topk(logits, 4)
            # bf16 logits tie often; compare the chosen logits (order-free) and the weights they give
            chosen = torch.gather(logits.float(), 1, idx.long()).sort(-1).values
            rchosen = torch.gather(logits.float(), 1, ridx.long()).sort(-1).values
            repeated = (idx.sort(-1).values.diff(dim=-1) == 0).any()
            if not torch.equal(chosen, rchosen) or bool(repeated):
                return math.inf
            return rel_l2(w.sort(-1).values, rw.sort(-1).values)
        check("route_topk", f"T={t} E={e} k=4", run, lambda: ops.route_topk(logits, 4, out=out),
              lambda: reference.route_topk(logits, 4), iters)


def check_router_fused(iters: int) -> None:
    """Fused router GEMM + top-k vs F.linear + reference top-k; timed (in CUDA graphs) vs GEMM + route_topk."""
    for t, e in [(1, 32), (16, 32), (64, 32), (256, 32), (1024, 32), (1, 128), (64, 128)]:
        hidden = 2880
        x, w, b = bf(t, hidden), bf(e, hidden, scale=hidden ** -0.5), bf(e, scale=0.5)
        out = (torch.full((t, 4), -1, dtype=torch.int32, device=DEV), torch.full((t, 4), float("nan"), device=DEV))
        ref_out = (torch.empty_like(out[0]), torch.empty_like(out[1]))

        def run() -> float:
            if DEV == "cuda" and not (ops.kernels_available() and ops.router_fused_ok(x, w, b, 4)):
                raise RuntimeError("the fused kernel would not be used for these inputs")
            idx, wt = ops.router_topk(x, w, b, 4, out=out, fused=True)
            logits = F.linear(x, w, b)
            problem = selfcheck.routing_problem(idx, wt, logits, 4)
            if problem:
                raise AssertionError(problem)
            return rel_l2(wt, torch.softmax(logits.float().gather(1, idx.long()), -1))
        check("router_topk fused", f"T={t} E={e} H={hidden} k=4", run,
              lambda: ops.router_topk(x, w, b, 4, out=out, fused=True),
              lambda: ops.router_topk(x, w, b, 4, out=ref_out, fused=False), iters, timer=bench_graph)


def check_rope_kv_fused(iters: int) -> None:
    """Fused RoPE + KV write (rotated q into a contiguous buffer, as the forward uses it) vs the torch
    references; timed (in CUDA graphs) vs what it replaces: apply_rope + write_kv_cache + q.contiguous()."""
    cache = ops.cos_sin_cache(131072, device=DEV)
    hq, hk, d, bs, blocks = 64, 8, 64, 16, 4096
    for t in (1, 64, 256, 2048):
        qkv = bf(t, (hq + 2 * hk) * d)
        positions = torch.randint(0, 131072, (t,), device=DEV)
        slots = torch.randperm(blocks * bs, device=DEV)[:t]
        slots[1::7] = -1

        def views(buf):
            return (buf[:, :hq * d].view(t, hq, d), buf[:, hq * d:(hq + hk) * d].view(t, hk, d),
                    buf[:, (hq + hk) * d:].view(t, hk, d))

        def run() -> float:
            a, r = qkv.clone(), qkv.clone()
            kc = torch.full((blocks, bs, hk, d), float("nan"), device=DEV, dtype=torch.bfloat16)
            vc, kr, vr = kc.clone(), kc.clone(), kc.clone()
            qa, ka, va = views(a)
            q_out = torch.full(qa.shape, float("nan"), device=DEV, dtype=torch.bfloat16)
            if DEV == "cuda" and not (ops.kernels_available()
                                      and ops.rope_write_kv_fused_ok(qa, ka, va, kc, vc, cache, q_out)):
                raise RuntimeError("the fused kernel would not be used for these inputs")
            ops.rope_write_kv(qa, ka, va, kc, vc, positions, slots, cache, fused=True, q_out=q_out)
            qr, kr_, vr_ = views(r)
            reference.apply_rope(qr, kr_, positions, cache)
            reference.write_kv_cache(kr_, vr_, kr, vr, slots)
            if not (torch.equal(kc.isnan(), kr.isnan()) and torch.equal(vc.isnan(), vr.isnan())):
                raise AssertionError("cache slots written differ (wrong slot, missed write, or a -1 slot written)")
            if not torch.equal(a[:, :hq * d], qkv[:, :hq * d]):
                raise AssertionError("q modified although q_out was given")
            written = ~kr.isnan()
            return max(rel_l2(q_out, qr), rel_l2(a[:, hq * d:], r[:, hq * d:]), rel_l2(kc[written], kr[written]),
                       rel_l2(vc[written], vr[written]))
        buf = qkv.clone()
        q, k, v = views(buf)
        kc = torch.zeros(blocks, bs, hk, d, device=DEV, dtype=torch.bfloat16)
        vc = kc.clone()
        q_out = torch.empty(q.shape, device=DEV, dtype=torch.bfloat16)

        def unfused() -> None:
            ops.apply_rope(q, k, positions, cache)
            ops.write_kv_cache(k, v, kc, vc, slots)
            q_out.copy_(q)
        check("rope_write_kv fused", f"T={t} 64q/8kv page16 q_out", run,
              lambda: ops.rope_write_kv(q, k, v, kc, vc, positions, slots, cache, fused=True, q_out=q_out), unfused,
              iters, timer=bench_graph)


def _paged_batch(lens_q: list[int], lens_k: list[int], hq: int, hk: int, page: int):
    d = 64
    max_pages = max((n + page - 1) // page for n in lens_k)
    num_pages = sum((n + page - 1) // page for n in lens_k) + 8
    kc, vc = bf(num_pages, page, hk, d), bf(num_pages, page, hk, d)
    perm = torch.randperm(num_pages, device=DEV).to(torch.int32)
    table = torch.zeros(len(lens_k), max_pages, dtype=torch.int32, device=DEV)
    used = 0
    for i, n in enumerate(lens_k):
        np_ = (n + page - 1) // page
        table[i, :np_] = perm[used:used + np_]
        used += np_
    q = bf(sum(lens_q), hq, d)
    cu = torch.tensor([0] + list(torch.tensor(lens_q).cumsum(0).tolist()), dtype=torch.int32, device=DEV)
    seqused = torch.tensor(lens_k, dtype=torch.int32, device=DEV)
    sinks = bf(hq, scale=2)
    return q, kc, vc, table, cu, seqused, sinks


def check_fa3(iters: int) -> None:
    mod = None
    if DEV == "cuda":  # the dry run checks the case set-up against the reference alone
        mod = ext.load(attention_fa3.MODULE, device_arch=ext.current_device_arch())
        mod.call("mv_fa3_probe")
    cases = [
        # name, lens_q, lens_k, page, window, sinks, num_splits
        ("decode b=1 k=4096 full", [1], [4096], 16, None, True, 0),
        ("decode b=1 k=4096 split=8", [1], [4096], 16, None, True, 8),
        ("decode b=64 mixed k sliding128", [1] * 64, [int(x) for x in torch.randint(1, 3000, (64,))], 16, 128, True, 0),
        ("decode b=64 mixed k full nosplit", [1] * 64, [int(x) for x in torch.randint(1, 3000, (64,))], 16, None, True, 1),
        ("prefill 4 seqs sliding128", [300, 1000, 17, 512], [300, 1000, 17, 512], 16, 128, True, 0),
        ("prefill 4 seqs full", [300, 1000, 17, 512], [300, 1000, 17, 512], 16, None, True, 0),
        ("chunked prefill page128 (TMA)", [256, 256], [1024, 700], 128, None, True, 0),
        ("prefill no sinks", [200, 64], [200, 64], 16, None, False, 0),
    ]
    for name, lq, lk, page, window, with_sinks, splits in cases:
        q, kc, vc, table, cu, seqused, sinks = _paged_batch(lq, lk, 64, 8, page)
        s = sinks if with_sinks else None
        out = nan_like(q)
        kw = dict(causal=True, sliding_window=window, sinks=s, softmax_scale=0.125)

        def ours():
            if mod is None:
                return ref()
            return attention_fa3.fa3_attention(q, kc, vc, table, cu, seqused, max(lq), max(lk), num_splits=splits,
                                               out=out, module=mod, **kw)

        def ref():
            return paged_reference(q, kc, vc, table, cu, seqused, **kw)
        check("fa3", name, lambda: rel_l2(ours(), ref()), ours, ref, max(5, iters // 5))


def check_fa3_plan(iters: int) -> None:
    """24 GPT-OSS attention layers (window 128 / full alternating) with FA3's scheduler metadata computed
    once per kind per step (StepPlan) vs FA3 computing it in every call; timed in CUDA graphs."""
    if DEV != "cuda":
        print("skip fa3_plan: needs the GPU")
        return
    cases = [("decode b=1 k=4096", [1], [4096]),
             ("decode b=64 mixed k", [1] * 64, [int(x) for x in torch.randint(1, 3000, (64,))]),
             ("decode b=256 mixed k", [1] * 256, [int(x) for x in torch.randint(1, 2048, (256,))])]
    layers = 24
    for name, lq, lk in cases:
        q, kc, vc, table, cu, seqused, sinks = _paged_batch(lq, lk, 64, 8, 16)
        outs = [nan_like(q) for _ in range(layers)]

        def step(use_plan: bool) -> None:
            plan = attention_fa3.StepPlan(layers, len(lk), q.device) if use_plan else None
            for i in range(layers):
                attention_fa3.fa3_attention(q, kc, vc, table, cu, seqused, max(lq), max(lk), causal=True,
                                            sliding_window=128 if i % 2 == 0 else None, sinks=sinks,
                                            softmax_scale=0.125, out=outs[i], plan=plan, layer=i)

        def run() -> float:
            step(False)
            want = [o.clone() for o in outs]
            for o in outs:
                o.fill_(float("nan"))
            step(True)
            return max(rel_l2(o, w) for o, w in zip(outs, want))
        check("fa3 step plan", f"{name} x{layers} layers", run, lambda: step(True), lambda: step(False),
              max(5, iters // 5), tol=1e-3, timer=lambda fn, n: bench_graph(fn, n, calls=1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ext-dir", help="directory holding mini_vllm_kernels.so / mini_vllm_fa3.so")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--only", default="",
                    help="comma-separated groups: norms,rope,kv,swiglu,mxfp4,routing,router_fused,rope_kv_fused,fa3,"
                         "fa3_plan")
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="exercise the script's logic on CPU (references vs themselves, no timing)")
    args = ap.parse_args()
    global DEV
    if args.ext_dir:
        ext.use_ext_dir(Path(args.ext_dir).resolve())
    if args.cpu_dry_run:
        DEV = "cpu"
    elif not torch.cuda.is_available():
        print("no CUDA device: this script runs on the GPU machine (or pass --cpu-dry-run)", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    device_name = torch.cuda.get_device_name() if DEV == "cuda" else "cpu (dry run)"
    print(f"device: {device_name} ({ext.current_device_arch()}), torch {torch.__version__}")
    for name in ("mini_vllm_kernels", "mini_vllm_fa3"):
        try:
            m = ext.load(name, device_arch=ext.current_device_arch())
            print(f"module {name}: {m.path} cubins {sorted(m.archs)}")
        except ext.ExtensionError as exc:
            print(f"module {name}: UNAVAILABLE: {exc}")
    if not ops.kernels_available():
        print(f"kernels module not usable: {ext.load_errors.get('mini_vllm_kernels', 'no CUDA device')}")
    groups = {"norms": check_norms, "rope": check_rope, "kv": check_kv_cache, "swiglu": check_swiglu,
              "mxfp4": check_mxfp4, "routing": check_routing, "router_fused": check_router_fused,
              "rope_kv_fused": check_rope_kv_fused, "fa3": check_fa3, "fa3_plan": check_fa3_plan}
    wanted = [g for g in args.only.split(",") if g] or list(groups)
    return run_groups({g: groups[g] for g in wanted}, (args.iters,), ROWS, args.json, {"device": device_name})


def run_groups(groups: dict[str, Callable], fn_args: tuple, rows: list[dict], json_path: str | None,
               header: dict) -> int:
    """Run each check group (a failing one is recorded, the rest still run), print the tally, write the
    rows as JSON; exit status 1 if anything failed. Shared with device_check_gemv.py."""
    for g, fn in groups.items():
        try:
            fn(*fn_args)
        except Exception as exc:  # noqa: BLE001 - e.g. a module missing: report, go on
            rows.append({"op": g, "case": "setup", "ok": False, "error": f"{type(exc).__name__}: {exc}"})
            print(f"FAIL {g:18} setup: {exc}", flush=True)
    failed = [r for r in rows if not r["ok"]]
    print(f"\n{len(rows) - len(failed)}/{len(rows)} checks passed")
    if json_path:
        Path(json_path).write_text(json.dumps({**header, "rows": rows}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
