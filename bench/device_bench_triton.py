"""Check and time the Triton fast-path kernels on the H100 at gpt-oss-20b shapes (one call, ~3 min).

Why a script and not a test: timings are measurements, not pass/fail facts; this prints them next to
the peers measured in the same run (device copy bandwidth, and the plain-torch paths the kernels
replace) so the ratios mean something. Correctness is checked first, on the GPU, against the torch
references (fresh random inputs, NaN-poisoned outputs, rel L2 error); a failing kernel is reported
and the others still run.

    python bench/device_bench_triton.py            # table on stdout
    OUT=/some/dir python bench/device_bench_triton.py   # + $OUT/device_bench_triton.json

MoE bytes = the packed weights of the distinct experts the routing hits (blocks+scales+biases).
Attention bytes = the K and V rows read once (each sequence's visible keys, all 8 KV heads);
prefill rows are compute-bound, so read their TFLOP/s (causal pairs x 4 x heads x head_dim).
"""
from __future__ import annotations

import json
from dataclasses import asdict
import os
import sys
import time
import traceback
from pathlib import Path

import torch
import triton
from triton.testing import do_bench, do_bench_cudagraph

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from mini_vllm.ops.triton.fused_moe import fused_moe_mxfp4, pick_config  # noqa: E402
from mini_vllm.ops.reference import dequant_mxfp4 as dequant_mxfp4_reference  # noqa: E402
from mini_vllm.ops.triton.mxfp4 import random_moe_weights  # noqa: E402
from mini_vllm.ops.triton.paged_attention import paged_attention  # noqa: E402
from mini_vllm.ops.reference import paged_attention as paged_attention_reference  # noqa: E402
from mini_vllm.ops.triton.reference import fused_moe_reference, swiglu_gpt_oss  # noqa: E402

H, I, E, TOPK = 2880, 2880, 32, 4
HQ, HKV, HEAD_DIM, KV_BLOCK = 64, 8, 64, 16
TOKENS = (1, 8, 64, 256, 1024)
DEV = "cuda"
TOL = 2e-2  # rel L2, bf16 activations / fp32 accumulation


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    if not torch.isfinite(got).all():
        return float("inf")
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def copy_bandwidth_gbs() -> float:
    """Device-to-device copy of 2 GiB: read + write bytes per second (the practical HBM ceiling)."""
    src = torch.empty(1 << 30, dtype=torch.bfloat16, device=DEV)
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=5, rep=200, return_mode="median")
    return 2 * src.numel() * src.element_size() / ms / 1e6


def route(t: int, gen: torch.Generator):
    logits = torch.randn(t, E, generator=gen, device=DEV)
    vals, ids = torch.topk(logits, TOPK)
    return ids, torch.softmax(vals.float(), dim=-1)


class DenseExperts:
    """Peer 2: the experts pre-dequantised to bf16 (4x the bytes), loop over hit experts + cuBLAS."""

    def __init__(self, w):
        self.w = w
        self.w1 = dequant_mxfp4_reference(w.gate_up_blocks, w.gate_up_scales, torch.bfloat16)
        self.w2 = dequant_mxfp4_reference(w.down_blocks, w.down_scales, torch.bfloat16)

    def __call__(self, x, ids, weights):
        out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        for e in torch.unique(ids).tolist():
            tok, slot = torch.nonzero(ids == e, as_tuple=True)
            h = torch.addmm(self.w.gate_up_bias[e], x[tok], self.w1[e].T)
            y = torch.addmm(self.w.down_bias[e], swiglu_gpt_oss(h), self.w2[e].T)
            out.index_add_(0, tok, y.float() * weights[tok, slot, None])
        return out.to(x.dtype)


def moe_section(copy_gbs: float, gen: torch.Generator) -> list[dict]:
    w = random_moe_weights(E, H, I, device=DEV, bias_dtype=torch.bfloat16, generator=None)
    dense = DenseExperts(w)
    per_expert = w.nbytes_per_expert()
    rows = []
    for t in TOKENS:
        row: dict = {"kernel": "fused_moe_mxfp4", "T": t}
        try:
            x = (torch.randn(t, H, generator=gen, device=DEV) * 0.01).to(torch.bfloat16)
            ids, weights = route(t, gen)
            out = torch.full_like(x, float("nan"))
            got = fused_moe_mxfp4(x, ids, weights, w, out=out)
            row["rel_err"] = rel_err(got, fused_moe_reference(x, ids, weights, w, torch.float32))
            row["ok"] = row["rel_err"] < TOL
            row["config"] = asdict(pick_config(t, TOPK, E))
            hit = torch.unique(ids).numel()
            row["experts_hit"] = hit
            moved = hit * per_expert
            ms = do_bench_cudagraph(lambda: fused_moe_mxfp4(x, ids, weights, w, out=out), rep=50,
                                    return_mode="median")
            ms_eager = do_bench(lambda: fused_moe_mxfp4(x, ids, weights, w, out=out),
                                return_mode="median")
            row.update(us=ms * 1e3, us_eager=ms_eager * 1e3, gbs=moved / ms / 1e6)
            row["pct_copy_bw"] = 100 * row["gbs"] / copy_gbs
            ms_loop = do_bench(lambda: fused_moe_reference(x, ids, weights, w, torch.bfloat16),
                               rep=50, return_mode="median")
            ms_dense = do_bench(lambda: dense(x, ids, weights), rep=50, return_mode="median")
            row.update(peer_dequant_loop_us=ms_loop * 1e3, peer_dense_bf16_us=ms_dense * 1e3,
                       speedup_vs_dequant_loop=ms_loop / ms, speedup_vs_dense_bf16=ms_dense / ms)
        except Exception as exc:  # one failing size must not stop the rest
            row.update(ok=False, error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc(-3))
        rows.append(row)
        print(fmt(row), flush=True)
    return rows


def paged_batch(q_lens: list[int], kv_lens: list[int], gen: torch.Generator):
    need = [triton.cdiv(n, KV_BLOCK) for n in kv_lens]
    num_blocks = sum(need)
    perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(1)).int().to(DEV)
    tables = torch.zeros(len(kv_lens), max(need), dtype=torch.int32, device=DEV)
    at = 0
    for b, n in enumerate(need):
        tables[b, :n] = perm[at:at + n]
        at += n
    cu = torch.tensor([0] + torch.tensor(q_lens).cumsum(0).tolist(), dtype=torch.int32, device=DEV)
    kc = torch.randn(num_blocks, KV_BLOCK, HKV, HEAD_DIM, generator=gen, device=DEV).bfloat16()
    vc = torch.randn(num_blocks, KV_BLOCK, HKV, HEAD_DIM, generator=gen, device=DEV).bfloat16()
    q = torch.randn(sum(q_lens), HQ, HEAD_DIM, generator=gen, device=DEV).bfloat16()
    seq_lens = torch.tensor(kv_lens, dtype=torch.int32, device=DEV)
    return q, kc, vc, cu, seq_lens, tables


def attention_cases():
    """(name, q_lens, kv_lens, window): decode batches at 1k context, long decode, prefill."""
    for t in TOKENS:
        yield f"decode B={t} ctx=1024", [1] * t, [1024] * t, 0
    yield "decode B=1 ctx=32768", [1], [32768], 0
    yield "decode B=8 ctx=8192 win=128", [1] * 8, [8192] * 8, 128
    for t in TOKENS[2:]:
        yield f"prefill T={t}", [t], [t], 0


def attention_section(copy_gbs: float, gen: torch.Generator) -> list[dict]:
    sinks = torch.randn(HQ, generator=gen, device=DEV).bfloat16()
    rows = []
    for name, q_lens, kv_lens, window in attention_cases():
        row: dict = {"kernel": "paged_attention", "case": name, "T": sum(q_lens)}
        try:
            q, kc, vc, cu, seq_lens, tables = paged_batch(q_lens, kv_lens, gen)
            kw = dict(max_seqlen_q=max(q_lens), max_seqlen_k=max(kv_lens), scale=0.125, sinks=sinks,
                      window=window)
            out = torch.full_like(q, float("nan"))
            got = paged_attention(q, kc, vc, cu, seq_lens, tables, out=out, **kw)
            if len(q_lens) <= 64:  # the reference loops over sequences in Python
                want = paged_attention_reference(q, kc, vc, tables, cu, seq_lens, softmax_scale=0.125,
                                                 sinks=sinks, sliding_window=window,
                                                 compute_dtype=torch.float32)
                row["rel_err"] = rel_err(got, want)
                row["ok"] = row["rel_err"] < TOL
            seen = [min(n, window) if window else n for n in kv_lens]
            moved = 2 * sum(seen) * HKV * HEAD_DIM * 2 + q.numel() * 4
            pairs = sum(qn * kn - qn * (qn - 1) // 2 for qn, kn in zip(q_lens, seen))  # causal
            ms = do_bench_cudagraph(lambda: paged_attention(q, kc, vc, cu, seq_lens, tables,
                                                            out=out, **kw), rep=50,
                                    return_mode="median")
            row.update(us=ms * 1e3, gbs=moved / ms / 1e6, pct_copy_bw=100 * moved / ms / 1e6 / copy_gbs,
                       tflops=4 * HQ * HEAD_DIM * pairs / ms / 1e9)
            if len(q_lens) <= 8:
                ms_ref = do_bench(lambda: paged_attention_reference(
                    q, kc, vc, tables, cu, seq_lens, softmax_scale=0.125, sinks=sinks, sliding_window=window,
                    compute_dtype=torch.bfloat16), rep=50, return_mode="median")
                row.update(peer_torch_gather_us=ms_ref * 1e3, speedup_vs_torch=ms_ref / ms)
        except Exception as exc:
            row.update(ok=False, error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc(-3))
        rows.append(row)
        print(fmt(row), flush=True)
    return rows


def fmt(row: dict) -> str:
    if "error" in row:
        return f"{row['kernel']:<16} {row.get('case', row['T'])!s:<28} FAILED {row['error']}"
    parts = [f"{row['kernel']:<16} {row.get('case', 'T=' + str(row['T']))!s:<28}"]
    if "rel_err" in row:
        parts.append(f"err {row['rel_err']:.1e} {'ok' if row['ok'] else 'BAD'}")
    parts.append(f"{row['us']:8.1f} us {row['gbs']:7.0f} GB/s ({row['pct_copy_bw']:4.1f}% copy)")
    if "tflops" in row:
        parts.append(f"{row['tflops']:6.1f} TFLOP/s")
    if "us_eager" in row:
        parts.append(f"eager {row['us_eager']:7.1f} us")
    for key in ("speedup_vs_dequant_loop", "speedup_vs_dense_bf16", "speedup_vs_torch"):
        if key in row:
            parts.append(f"x{row[key]:.1f} {key[11:]}")
    return " | ".join(parts)


def main() -> int:
    if not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 2
    start = time.time()
    gen = torch.Generator(device=DEV).manual_seed(0)
    info = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__}
    copy_gbs = copy_bandwidth_gbs()
    print(f"{info['device']} torch {info['torch']} triton {info['triton']}: "
          f"copy bandwidth {copy_gbs:.0f} GB/s", flush=True)
    results = {**info, "copy_gbs": copy_gbs, "moe": [], "attention": []}
    for key, section in (("moe", moe_section), ("attention", attention_section)):
        try:
            results[key] = section(copy_gbs, gen)
        except Exception as exc:  # setup of a whole section failed; still run the other
            results[key] = [{"ok": False, "error": f"{type(exc).__name__}: {exc}"}]
            print(f"{key}: FAILED {exc}", flush=True)
    results["wall_s"] = time.time() - start
    if os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / "device_bench_triton.json"
        path.write_text(json.dumps(results, indent=1))
        print(f"wrote {path}")
    bad = [r for sec in ("moe", "attention") for r in results[sec] if r.get("ok") is False]
    print(f"{len(bad)} failing rows, {results['wall_s']:.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
