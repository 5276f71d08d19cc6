"""Compile every Triton kernel for sm_90a with the real Triton compiler (ttir -> ptx -> cubin via the
ptxas Triton bundles): no GPU needed, and it catches what the interpreter cannot (type unification,
non-constexpr globals, dot shape rules, register/shared-memory limits).

Run as a script (without TRITON_INTERPRET) it compiles and prints a line per kernel; the pytest test
runs that script in a clean subprocess, because the interpreter flag is fixed when @triton.jit runs.
"""
from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]


def _variants():
    moe_align = importlib.import_module("mini_vllm.ops.triton.moe_align")
    moe_gemm = importlib.import_module("mini_vllm.ops.triton.moe_gemm")
    pa = importlib.import_module("mini_vllm.ops.triton.paged_attention")  # name shadowed by a function
    ptr = {"x_ptr": "*bf16", "h_ptr": "*bf16", "out_ptr": "*bf16", "bias_ptr": "*bf16",
           "blk_ptr": "*u8", "scl_ptr": "*u8", "w_ptr": "*fp32", "sorted_ids_ptr": "*i32",
           "expert_ids_ptr": "*i32", "topk_ids_ptr": "*i32", "num_padded_ptr": "*i32",
           "q_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16", "o_ptr": "*bf16",
           "sinks_ptr": "*bf16", "cu_q_ptr": "*i32", "seq_lens_ptr": "*i32", "bt_ptr": "*i32",
           "part_o_ptr": "*fp32", "part_ml_ptr": "*fp32", "src_ptr": "*fp32", "sm_scale": "fp32",
           "alpha": "fp32", "limit": "fp32"}
    moe = [dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=128, EVEN_K=False, DECODE=1),
           dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, EVEN_K=True, DECODE=0),
           dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=128, EVEN_K=False, DECODE=1),
           dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, EVEN_K=True, DECODE=0)]
    for tiles in moe:
        yield moe_gemm.moe_gate_up_kernel, ptr, dict(TOP_K=4, HAS_BIAS=True, **tiles)
        yield moe_gemm.moe_down_kernel, {**ptr, "out_ptr": "*fp32"}, dict(HAS_BIAS=True, **tiles)
    gemv = importlib.import_module("mini_vllm.ops.triton.moe_gemv")
    gptr = {**ptr, "blk_ptr": "*i32"}  # MXFP4 blocks viewed as int32 words
    for bm, bn, groups, split in ((1, 16, 8, 1), (1, 32, 4, 4), (4, 16, 8, 2)):
        knobs = dict(HAS_BIAS=True, BLOCK_M=bm, BLOCK_N=bn, GROUPS=groups, DIRECT=bm == 1)
        yield gemv.moe_gate_up_gemv_kernel, gptr, dict(TOP_K=4, **knobs)
        yield gemv.moe_down_gemv_kernel, {**gptr, "out_ptr": "*fp32"}, dict(SPLIT_K=split, **knobs)
    yield moe_gemm.moe_sum_kernel, ptr, dict(TOP_K=4, BLOCK_N=1024)
    yield moe_align._moe_align_kernel, ptr, dict(E_P2=32, BLOCK_M=16, CHUNK=256)
    for block_t, splits in ((2, 1), (2, 8), (8, 1)):
        yield pa._paged_attn_kernel, ptr, dict(GROUP=8, HEAD_DIM=64, KV_BLOCK=16, BLOCK_T=block_t,
                                               BLOCK_N=32, HAS_SINKS=True, NUM_SPLITS=splits)
    yield pa._combine_kernel, ptr, dict(HEAD_DIM=64, NUM_SPLITS=8, SPLITS_P2=8, HAS_SINKS=True)


def compile_all() -> list[str]:
    """Compile each kernel variant for sm_90a; return one summary line each (raises on failure)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    lines = []
    for kernel, types, consts in _variants():
        names = list(inspect.signature(kernel.fn).parameters)
        sig = {n: ("constexpr" if n in consts else types.get(n, "i32")) for n in names}
        src = ASTSource(kernel, sig, constexprs=consts)
        warps = 8 if consts.get("BLOCK_M") == 64 else 4
        out = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                             options={"num_warps": warps, "num_stages": 3})
        lines.append(f"{kernel.fn.__name__} {consts}: shared={out.metadata.shared} B, "
                     f"cubin={len(out.asm['cubin'])} B")
    return lines


@pytest.mark.timeout(300)
def test_all_kernels_compile_for_sm90a(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")  # compile for real, not from a warm cache
    env["PYTHONPATH"] = str(ROOT / "python") + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True,
                          timeout=280)
    assert proc.returncode == 0, proc.stderr[-4000:]
    compiled = [ln for ln in proc.stdout.splitlines() if "cubin=" in ln]
    assert len(compiled) == len(list(_variants())), proc.stdout


if __name__ == "__main__":
    for line in compile_all():
        print(line, flush=True)
