"""Tune the MXFP4 fused-MoE tiles on the H100 at gpt-oss-20b shapes; one call, <= ~4 min.

Why a separate script: the kernels read their tiles from python/mini_vllm/ops/triton/moe_configs.json
(T buckets); this measures candidates per T and writes that file's exact shape to
$OUT/moe_configs.json, so the winners drop in without code changes. gate_up and down are tuned
separately (their winners combine; block_m is shared because it sizes the align step), each
candidate first checked against a torch reference of its own stage (fresh random inputs,
NaN-poisoned outputs, rel L2 < 2e-2), then timed as a CUDA graph (do_bench_cudagraph median).
A failing candidate is recorded and the rest still run. The combined winner per T is re-checked
end to end against fused_moe_reference and timed next to the shipped table's config.
At T <= 8 the GEMV kernels (moe_gemv.py: block_n/block_k/warps, down's split_k; block_m = slots per
program, 1 = no align) are tried first, then the grouped GEMM; the per-T winner (either kernel) goes
into the table with its "kernel" field. T <= 8 get twice the time share of larger T.

    OUT=/some/dir python3 bench/device_tune_moe.py          # H100: table + moe_tune.json + moe_configs.json
    python3 bench/device_tune_moe.py --smoke                # CPU interpreter, tiny shapes (script check)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from mini_vllm.ops.triton.fused_moe import (GemmTiles, MoeConfig, fused_moe_mxfp4,  # noqa: E402
                                            gemv_routing, moe_down, moe_down_gemv, moe_gate_up,
                                            moe_gate_up_gemv, moe_sum, pick_config)
from mini_vllm.ops.triton.moe_align import moe_align_block_size  # noqa: E402
from mini_vllm.ops.reference import dequant_mxfp4 as dequant_mxfp4_reference  # noqa: E402
from mini_vllm.ops.triton.mxfp4 import random_moe_weights  # noqa: E402
from mini_vllm.ops.triton.reference import fused_moe_reference, swiglu_gpt_oss  # noqa: E402

TOL = 2e-2
GPU = dict(H=2880, I=2880, E=32, K=4, tokens=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096),
           dtype=torch.bfloat16, budget_s=185.0)
SMOKE = dict(H=64, I=96, E=8, K=2, tokens=(1, 5, 40), dtype=torch.float16, budget_s=600.0)
GEMV_MAX_T = 8  # T*k <= 32 routed slots


def variants(t: int, smoke: bool) -> list[tuple[str, int]]:
    """(kernel, block_m) to tune at T, GEMV first (a budget cut drops the tail)."""
    gemv = [("gemv", 1)] + ([("gemv", 2)] if t == 2 else [("gemv", 4)] if t >= 4 else [])
    if smoke:
        return (gemv if t <= GEMV_MAX_T else []) + [("grouped", 16)]
    grouped = [16] if t <= 32 else [16, 32, 64] if t <= 256 else [64, 128]
    return (gemv if t <= GEMV_MAX_T else []) + [("grouped", bm) for bm in grouped]


def gemv_phase1(stage: str, smoke: bool) -> list[GemmTiles]:
    """GEMV candidates: (block_n, block_k, warps[, split_k]) - output rows per program, K per step."""
    if smoke:
        return [GemmTiles(16, 64, 4, 1, split_k=1)] + ([GemmTiles(32, 32, 2, 1, split_k=3)]
                                                        if stage == "down" else [])
    if stage == "gate_up":
        shapes = [(16, 256, 4, 1), (8, 256, 4, 1), (32, 256, 4, 1), (16, 512, 4, 1), (8, 512, 2, 1),
                  (16, 128, 2, 1), (32, 128, 8, 1)]
    else:
        shapes = [(16, 256, 4, 1), (16, 256, 4, 2), (8, 256, 4, 1), (32, 256, 4, 3), (16, 512, 4, 2),
                  (8, 512, 2, 1), (32, 128, 4, 1)]
    return [GemmTiles(bn, bk, w, 1, split_k=sk) for bn, bk, w, sk in shapes]


def gemv_phase2(best: GemmTiles, stage: str, smoke: bool) -> list[GemmTiles]:
    """Warps (and down's K-split) around the GEMV phase-1 winner."""
    if smoke:
        return []
    cands = [replace(best, num_warps=w) for w in (2, 4, 8) if w != best.num_warps]
    if stage == "down":
        cands += [replace(best, split_k=s) for s in (1, 2, 3, 5) if s != best.split_k]
    return cands


def phase1(t: int, smoke: bool) -> list[GemmTiles]:
    """Tile shapes at default launch knobs; most promising first (a budget cut drops the tail)."""
    if smoke:
        return [GemmTiles(32, 64, 4, 2, d) for d in ("dot_scaled", "bits")] + [GemmTiles(64, 32, 4, 2, "bits")]
    if t <= 256:
        shapes = [(32, 128), (16, 128), (64, 128), (32, 256), (16, 256), (32, 64), (64, 64)]
    else:
        shapes = [(128, 128), (64, 128), (128, 64), (256, 64), (64, 64)]
    return [GemmTiles(bn, bk, 4 if t <= 256 else 8, 3, d)
            for bn, bk in shapes for d in ("dot_scaled", "bits")]


def phase2(best: GemmTiles, t: int, smoke: bool) -> list[GemmTiles]:
    """Launch-knob variations around a phase-1 winner."""
    if smoke:
        return [replace(best, num_stages=3)]
    knobs = [(4, 2), (4, 4), (8, 3), (2, 3)] if t <= 256 else [(4, 3), (8, 4), (8, 2), (4, 4)]
    return [replace(best, num_warps=w, num_stages=s) for w, s in knobs
            if (w, s) != (best.num_warps, best.num_stages)]


class Bench:
    """Timer: CUDA graph replay median on the GPU, plain wall clock in the CPU smoke run."""

    def __init__(self, smoke: bool):
        self.smoke = smoke

    def __call__(self, fn) -> float:
        if self.smoke:
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e6
        from triton.testing import do_bench_cudagraph
        return do_bench_cudagraph(fn, rep=15, return_mode="median") * 1e3


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    if not torch.isfinite(got).all():
        return float("inf")
    return ((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30)).item()


def stage_references(x, ids, weights, w, k):
    """Per-slot act (fp32) and per-slot down output (fp32, from act rounded to x.dtype)."""
    t = x.shape[0]
    act = torch.zeros(t * k, w.intermediate_size, dtype=torch.float32, device=x.device)
    down = torch.zeros(t * k, w.hidden_size, dtype=torch.float32, device=x.device)
    flat = ids.reshape(-1)
    for e in torch.unique(flat).tolist():
        slots = torch.nonzero(flat == e).flatten()
        w1 = dequant_mxfp4_reference(w.gate_up_blocks[e], w.gate_up_scales[e], torch.float32)
        h = x[slots // k].float() @ w1.T + w.gate_up_bias[e].float()
        act[slots] = swiglu_gpt_oss(h)
        w2 = dequant_mxfp4_reference(w.down_blocks[e], w.down_scales[e], torch.float32)
        y = act[slots].to(x.dtype).float() @ w2.T + w.down_bias[e].float()
        down[slots] = y * weights.reshape(-1)[slots, None].float()
    return act, down


def tune_stage(name, run, want, cands, t, bench, deadline) -> list[dict]:
    """Check then time each candidate; rows sorted fastest first (failures last)."""
    rows = []
    for tiles in cands:
        row = {"stage": name, "T": t, "tiles": asdict(tiles)}
        if time.time() > deadline:
            row.update(ok=False, error="skipped: time budget")
            rows.append(row)
            continue
        try:
            got = run(tiles, poison=True)
            row["rel_err"] = rel_err(got, want)
            row["ok"] = row["rel_err"] < TOL
            if row["ok"]:
                row["us"] = bench(lambda: run(tiles, poison=False))
        except Exception as exc:  # one bad candidate must not stop the rest
            row.update(ok=False, error=f"{type(exc).__name__}: {str(exc)[:300]}",
                       trace=traceback.format_exc(-2)[-800:])
        rows.append(row)
    return sorted(rows, key=lambda r: r.get("us", float("inf")))


def tune_block_m(t, kernel, bm, ctx, bench, deadline) -> dict:
    x, ids, weights, w, k, act_ref, down_ref = ctx
    gemv = kernel == "gemv"
    if gemv:
        route = lambda: gemv_routing(ids, w.num_experts, bm)  # noqa: E731
        gate_up, down = moe_gate_up_gemv, moe_down_gemv
    else:
        route = lambda: moe_align_block_size(ids, w.num_experts, bm)[:2]  # noqa: E731
        gate_up, down = moe_gate_up, moe_down
    sorted_ids, expert_ids = route()
    act = torch.empty(t * k, w.intermediate_size, dtype=x.dtype, device=x.device)
    act_in = act_ref.to(x.dtype)
    per_split = {}  # split_k -> [T*k*split_k, H] fp32
    flat_w = weights.reshape(-1).contiguous()

    def buf(splits):
        if splits not in per_split:
            per_split[splits] = torch.empty(t * k * splits, w.hidden_size, dtype=torch.float32,
                                            device=x.device)
        return per_split[splits]

    def run_gu(tiles, poison):
        if poison:
            act.fill_(float("nan"))
        return gate_up(x, sorted_ids, expert_ids, w, k, bm, tiles, act)

    def run_dn(tiles, poison):
        out = buf(tiles.split_k)
        if poison:
            out.fill_(float("nan"))
        down(act_in, sorted_ids, expert_ids, flat_w, w, bm, tiles, out)
        return out.view(t * k, tiles.split_k, -1).sum(1) if poison else out

    out = {"kernel": kernel, "block_m": bm, "align_us": bench(route) if gemv and bm > 1 or not gemv else 0.0}
    p1 = (lambda name: gemv_phase1(name, bench.smoke)) if gemv else (lambda name: phase1(t, bench.smoke))
    p2 = ((lambda best, name: gemv_phase2(best, name, bench.smoke)) if gemv
          else (lambda best, name: phase2(best, t, bench.smoke)))
    for name, run, want in (("gate_up", run_gu, act_ref), ("down", run_dn, down_ref)):
        rows = tune_stage(name, run, want, p1(name), t, bench, deadline)
        if rows and "us" in rows[0]:
            rows = sorted(rows + tune_stage(name, run, want, p2(GemmTiles(**rows[0]["tiles"]), name),
                                            t, bench, deadline),
                          key=lambda r: r.get("us", float("inf")))
        out[name] = rows
    sum_buf = torch.empty_like(x)
    splits = out["down"][0]["tiles"]["split_k"] if out["down"] else 1
    out["sum_us"] = bench(lambda: moe_sum(buf(splits), sum_buf, k * splits))
    best = [out[s][0] for s in ("gate_up", "down")]
    out["total_us"] = (out["align_us"] + out["sum_us"] + sum(r["us"] for r in best)
                       if all("us" in r for r in best) else float("inf"))
    return out


def tune_t(t, shapes, w, bench, deadline, gen) -> dict:
    dev = w.down_blocks.device
    k, e = shapes["K"], shapes["E"]
    x = (torch.randn(t, shapes["H"], generator=gen, device=dev) * 0.05).to(shapes["dtype"])
    vals, ids = torch.topk(torch.randn(t, e, generator=gen, device=dev), k)
    weights = torch.softmax(vals.float(), dim=-1)
    act_ref, down_ref = stage_references(x, ids, weights, w, k)
    ctx = (x, ids, weights, w, k, act_ref, down_ref)
    res = {"T": t, "experts_hit": torch.unique(ids).numel(), "by_block_m": []}
    for kernel, bm in variants(t, bench.smoke):
        try:
            res["by_block_m"].append(tune_block_m(t, kernel, bm, ctx, bench, deadline))
        except Exception as exc:
            res["by_block_m"].append({"kernel": kernel, "block_m": bm, "total_us": float("inf"),
                                      "error": f"{type(exc).__name__}: {exc}"})
    best = min(res["by_block_m"], key=lambda r: r["total_us"])
    want = fused_moe_reference(x, ids, weights, w, torch.float32)
    out = torch.empty_like(x)
    for label, cfg in (("shipped", pick_config(t, k, e)), ("tuned", _config(best))):
        if cfg is None:
            continue
        try:
            out.fill_(float("nan"))
            err = rel_err(fused_moe_mxfp4(x, ids, weights, w, cfg, out=out), want)
            res[label] = {"config": cfg.to_dict(), "rel_err": err, "ok": err < TOL,
                          "us": bench(lambda: fused_moe_mxfp4(x, ids, weights, w, cfg, out=out))}
        except Exception as exc:
            res[label] = {"config": cfg.to_dict(), "ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return res


def _config(best: dict) -> MoeConfig | None:
    if best["total_us"] == float("inf"):
        return None
    gu, dn = (GemmTiles(**best[s][0]["tiles"]) for s in ("gate_up", "down"))
    return MoeConfig(block_m=best["block_m"], **asdict(gu), down=dn, kernel=best.get("kernel", "grouped"))


def fmt_tiles(row: dict) -> str:
    if "us" not in row:
        return f"FAILED({row.get('error', 'bad err %.1e' % row.get('rel_err', float('nan')))[:60]})"
    t = row["tiles"]
    split = f" k/{t['split_k']}" if t.get("split_k", 1) > 1 else ""
    return (f"{t['block_n']}x{t['block_k']} w{t['num_warps']} s{t['num_stages']} "
            f"{t['decode'][:4]}{split} {row['us']:.1f}us")


def report(res: dict, per_expert_bytes: int, copy_gbs: float) -> None:
    t = res["T"]
    tuned, shipped = res.get("tuned", {}), res.get("shipped", {})
    moved = res["experts_hit"] * per_expert_bytes
    line = f"T={t:<5}"
    for label, r in (("tuned", tuned), ("shipped", shipped)):
        if "us" in r:
            line += (f" | {label} {r['us']:8.1f} us err {r['rel_err']:.1e} "
                     f"{moved / r['us'] / 1e3:6.0f} GB/s ({100 * moved / r['us'] / 1e3 / copy_gbs:4.1f}%)")
        elif r:
            line += f" | {label} FAILED {r.get('error', 'err %.1e' % r.get('rel_err', float('nan')))[:80]}"
    print(line)
    for bm in res["by_block_m"]:
        kern = "gemv " if bm.get("kernel") == "gemv" else ""
        if "error" in bm:
            print(f"    {kern}block_m={bm['block_m']}: FAILED {bm['error'][:100]}")
            continue
        print(f"    {kern}block_m={bm['block_m']:<3} sum-of-stages {bm['total_us']:8.1f} us "
              f"(align {bm['align_us']:.1f}, sum {bm['sum_us']:.1f})")
        for stage in ("gate_up", "down"):
            ok = [r for r in bm[stage] if "us" in r]
            bad = [r for r in bm[stage] if "us" not in r]
            print(f"      {stage:<7} " + " ; ".join(fmt_tiles(r) for r in ok[:4])
                  + (f"  [{len(bad)} failed/skipped: {fmt_tiles(bad[0])}]" if bad else ""))
    sys.stdout.flush()


def copy_bandwidth_gbs(smoke: bool) -> float:
    if smoke:
        return float("nan")
    from triton.testing import do_bench
    src = torch.empty(1 << 30, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=5, rep=100, return_mode="median")
    return 2 * src.numel() * src.element_size() / ms / 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU interpreter, tiny shapes")
    ap.add_argument("--tokens", type=int, nargs="*", help="override the T list")
    ap.add_argument("--budget", type=float, help="seconds before remaining candidates are skipped")
    args = ap.parse_args(argv)
    shapes = dict(SMOKE if args.smoke else GPU)
    if args.tokens:
        shapes["tokens"] = tuple(args.tokens)
    if not args.smoke and not torch.cuda.is_available():
        print("needs a CUDA device (or --smoke)", file=sys.stderr)
        return 2
    dev = "cpu" if args.smoke else "cuda"
    start = time.time()
    budget = args.budget or shapes["budget_s"]
    gen = torch.Generator(device=dev).manual_seed(0)
    w = random_moe_weights(shapes["E"], shapes["H"], shapes["I"], device=dev,
                           bias_dtype=shapes["dtype"], generator=torch.Generator().manual_seed(1))
    copy_gbs = copy_bandwidth_gbs(args.smoke)
    import triton
    info = {"device": "cpu-interpreter" if args.smoke else torch.cuda.get_device_name(),
            "torch": torch.__version__, "triton": triton.__version__, "copy_gbs": copy_gbs,
            "shapes": {k: (str(v) if k == "dtype" else v) for k, v in shapes.items()}}
    print(f"{info['device']} torch {info['torch']} triton {info['triton']} copy {copy_gbs:.0f} GB/s; "
          f"budget {budget:.0f} s", flush=True)
    bench = Bench(args.smoke)
    results = []
    tokens = shapes["tokens"]
    share = [2.0 if t <= GEMV_MAX_T else 1.0 for t in tokens]  # GEMV + grouped candidates at small T
    for i, t in enumerate(tokens):
        # each T gets its share of what is left, so a slow T cannot starve the later ones
        deadline = time.time() + (start + budget - time.time()) * share[i] / sum(share[i:])
        try:
            res = tune_t(t, shapes, w, bench, deadline, gen)
        except Exception as exc:
            res = {"T": t, "experts_hit": 0, "by_block_m": [], "error": f"{type(exc).__name__}: {exc}"}
            print(f"T={t}: FAILED {res['error']}", flush=True)
        results.append(res)
        if "error" not in res:
            report(res, w.nbytes_per_expert(), copy_gbs)
    table = []
    for res in results:
        cfg = _config(min(res["by_block_m"], key=lambda r: r["total_us"])) if res["by_block_m"] else None
        if cfg is not None and res.get("tuned", {}).get("ok"):
            table.append({"max_tokens": res["T"], **cfg.to_dict()})
    if table:
        table[-1]["max_tokens"] = 1_000_000_000
    wall = time.time() - start
    print(f"{sum(1 for r in results if r.get('tuned', {}).get('ok'))}/{len(results)} T values tuned, "
          f"{wall:.0f} s")
    out_dir = os.environ.get("OUT")
    if out_dir:
        doc = {**info, "wall_s": wall, "results": results}
        Path(out_dir, "moe_tune.json").write_text(json.dumps(doc, indent=1, default=str))
        Path(out_dir, "moe_configs.json").write_text(json.dumps(
            {"_doc": f"tuned by bench/device_tune_moe.py on {info['device']}", "buckets": table},
            indent=1))
        print(f"wrote {out_dir}/moe_tune.json and {out_dir}/moe_configs.json")
    return 0 if table else 1


if __name__ == "__main__":
    if "--smoke" in sys.argv:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
        from mini_vllm.ops.triton.interpret import interpreted
        with interpreted():
            sys.exit(main())
    sys.exit(main())
