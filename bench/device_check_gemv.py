#!/usr/bin/env python3
"""GPU check + timing of the decode MoE GEMV kernels (kernels/gemv_mma.cu) against the Triton MoE.

For T = 1, 2, 4, 8 tokens: the MXFP4 MoE (H = I = 2880, E = 32 and 128, k = 4) vs the Triton MoE on the
same random weights; the MoE sum + residual add + RMSNorm kernel vs torch; and a prefill MoE candidate
(one layer dequantised to bf16 + torch._grouped_mm) vs Triton at T = 256..8192 (measured slower on the
H100, call 16: 0.10-0.65x; not in the runtime). Weights here fit in L2 across repeated calls, so these
are upper bounds; the decode graphs of bench/device_bench_gptoss.py are the real test. Correctness first (relative L2 vs
an fp32 reference / the Triton path, fresh random inputs), then CUDA-graph timings (20 calls per graph,
median of replays) with the bytes each call must read as GB/s and as a share of a device-to-device copy
measured in the same run. Exit status 1 if any check fails.

    python3 bench/device_check_gemv.py [--iters 30] [--json $OUT/gemv.json]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

from device_check_kernels import bench_graph, run_groups  # noqa: E402
from gptoss_common import copy_bandwidth  # noqa: E402
from mini_vllm import ops  # noqa: E402
from mini_vllm.ops import gemv, reference, selfcheck  # noqa: E402
from mini_vllm.ops.triton.fused_moe import fused_moe_mxfp4, fused_moe_mxfp4_rows  # noqa: E402
from mini_vllm.ops.triton.mxfp4 import random_moe_weights  # noqa: E402

ROWS: list[dict] = []


def report(row: dict, bw: float) -> None:
    ROWS.append(row)
    t = f"ours {row['us_ours']:7.1f} us ({row['gbps']:6.0f} GB/s = {row['gbps'] / bw:5.1%} of copy)  " \
        f"peer {row['us_peer']:7.1f} us  x{row['us_peer'] / row['us_ours']:5.2f}" if "us_ours" in row else ""
    print(f"{'ok' if row['ok'] else 'FAIL':4} {row['op']:14} {row['case']:26} err {row['err']:.2e}  {t}", flush=True)


def moe(iters: int, bw: float) -> None:
    h = i = 2880
    for e in (32, 128):
        w = random_moe_weights(e, h, i, device="cuda", bias_dtype=torch.bfloat16)
        per_expert = w.nbytes_per_expert()
        for t in (1, 2, 4, 8):
            x = torch.randn(t, h, device="cuda").to(torch.bfloat16)
            ids, weights = selfcheck._random_routing(t, 4, e, torch.Generator(device="cuda").manual_seed(t), x.device)
            rows = gemv.moe_gemv_slots(x, ids, weights, w)
            ref, r = fused_moe_mxfp4_rows(x, ids, weights, w)
            err = selfcheck.rel_l2(rows.view(t, 4, h).sum(1), ref.view(t, r, h).sum(1))
            row = {"op": "moe gemv", "case": f"E={e} T={t} ({ids.unique().numel()} experts)", "err": err,
                   "ok": bool(rows is not None) and err <= selfcheck.TOL}
            res, nw = torch.randn(t, h, device="cuda").to(torch.bfloat16), torch.ones(h, device="cuda").to(torch.bfloat16)

            def ours() -> None:
                rr = gemv.moe_gemv_slots(x, ids, weights, w)
                gemv.moe_sum_add_rms_norm(rr, 4, res, nw)

            def peer() -> None:  # the path it replaces: Triton MoE (align, gate_up, down, sum) + fused add+norm
                ops.fused_add_rms_norm(fused_moe_mxfp4(x, ids, weights, w), res, nw)
            row["us_ours"] = bench_graph(ours, iters)
            row["us_peer"] = bench_graph(peer, iters)
            row["gbps"] = ids.unique().numel() * per_expert / row["us_ours"] / 1e3
            report(row, bw)


def grouped_mm_moe(x, ids, weights, w, dq1, dq2):
    """Candidate prefill MoE: experts dequantised to bf16 (dq1 [E, 2I, H], dq2 [E, H, I], this layer only),
    slots sorted by expert, torch._grouped_mm (CUTLASS wgmma grouped GEMM inside torch) twice."""
    t, k = ids.shape
    flat = ids.reshape(-1).long()
    order = torch.sort(flat, stable=True).indices
    counts = torch.zeros(dq1.shape[0], dtype=torch.int32, device=x.device)
    counts.index_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))   # no host sync (graph capture)
    offs = counts.cumsum(0).to(torch.int32)
    xs = x[order // k]
    e_sorted = flat[order]
    h = torch._grouped_mm(xs, dq1.transpose(1, 2), offs=offs) + w.gate_up_bias[e_sorted]
    act = reference.swiglu_clamped(h)
    y = torch._grouped_mm(act, dq2.transpose(1, 2), offs=offs).float() + w.down_bias[e_sorted].float()
    rows = torch.empty(t * k, x.shape[1], dtype=torch.float32, device=x.device)
    rows[order] = y * weights.reshape(-1)[order, None]
    return rows


def prefill_moe(iters: int, bw: float) -> None:
    """Prefill-sized MoE: Triton grouped GEMM vs dequantise-this-layer + torch._grouped_mm (timed with the
    dequantisation included)."""
    h = i = 2880
    e = 32
    w = random_moe_weights(e, h, i, device="cuda", bias_dtype=torch.bfloat16)
    dq1 = torch.empty(e, 2 * i, h, dtype=torch.bfloat16, device="cuda")
    dq2 = torch.empty(e, h, i, dtype=torch.bfloat16, device="cuda")

    def dequant() -> None:
        ops.dequant_mxfp4(w.gate_up_blocks, w.gate_up_scales, out=dq1.view(e, 2 * i, h))
        ops.dequant_mxfp4(w.down_blocks, w.down_scales, out=dq2.view(e, h, i))
    dequant()
    for t in (256, 1024, 2048, 4096, 8192):
        x = torch.randn(t, h, device="cuda").to(torch.bfloat16)
        ids, weights = selfcheck._random_routing(t, 4, e, torch.Generator(device="cuda").manual_seed(t), x.device)
        row = {"op": "moe prefill", "case": f"E={e} T={t} grouped_mm", "err": float("nan"), "ok": False}
        try:
            got = grouped_mm_moe(x, ids, weights, w, dq1, dq2)
            ref, r = fused_moe_mxfp4_rows(x, ids, weights, w)
            row["err"] = selfcheck.rel_l2(got.view(t, 4, h).sum(1), ref.view(t, r, h).sum(1))
            row["ok"] = row["err"] <= selfcheck.TOL
            row["us_ours"] = bench_graph(lambda: (dequant(), grouped_mm_moe(x, ids, weights, w, dq1, dq2)),
                                         max(5, iters // 3), calls=2)
            row["us_peer"] = bench_graph(lambda: fused_moe_mxfp4_rows(x, ids, weights, w), max(5, iters // 3),
                                         calls=2)
            row["gbps"] = 2 * t * 4 * (3 * h * i) / row["us_ours"] / 1e3   # here: GFLOP/s (mma work)
        except Exception as exc:  # noqa: BLE001 - the candidate may not exist in this torch
            row["error"] = repr(exc)[:200]
            print(f"FAIL moe prefill T={t}: {exc!r}"[:300], flush=True)
            ROWS.append(row)
            continue
        report(row, bw)
        print(f"     (T={t}: {row['gbps'] / 1e3:.0f} TFLOP/s incl. the dequantisation)", flush=True)


def sum_norm(iters: int, bw: float) -> None:
    h = 2880
    for t, r in ((1, 4), (8, 4), (256, 4), (2, 8)):
        rows = torch.randn(t * r, h, device="cuda")
        res, nw = torch.randn(t, h, device="cuda").to(torch.bfloat16), (1 + 0.1 * torch.randn(h, device="cuda")).to(torch.bfloat16)
        r1, r2 = res.clone(), res.clone()
        out = torch.full_like(res, float("nan"))
        gemv.moe_sum_add_rms_norm(rows, r, r1, nw, out=out)
        y = rows.view(t, r, h).sum(1).to(torch.bfloat16)
        reference.fused_add_rms_norm(y, r2, nw)
        err = max(selfcheck.rel_l2(out, y), selfcheck.rel_l2(r1, r2))
        row = {"op": "moe sum+norm", "case": f"T={t} rows/token={r}", "err": err, "ok": err <= selfcheck.TOL}
        row["us_ours"] = bench_graph(lambda: gemv.moe_sum_add_rms_norm(rows, r, r1, nw, out=out), iters)

        def peer() -> None:
            yy = rows.view(t, r, h).sum(1).to(torch.bfloat16)
            reference.fused_add_rms_norm(yy, r2, nw)
        row["us_peer"] = bench_graph(peer, iters)
        row["gbps"] = rows.numel() * 4 / row["us_ours"] / 1e3
        report(row, bw)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.manual_seed(0)
    bw = copy_bandwidth()
    print(f"device: {torch.cuda.get_device_name()}; copy bandwidth {bw:.0f} GB/s (read + write)")
    return run_groups({f.__name__: f for f in (moe, sum_norm, prefill_moe)}, (args.iters, bw), ROWS,
                      args.json, {"device": torch.cuda.get_device_name(), "copy_GBps": bw})

if __name__ == "__main__":
    sys.exit(main())
