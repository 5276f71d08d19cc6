"""PTX evidence for the MoE GEMV kernels: compile for sm_90a here (no GPU) and count what runs per K step.

Why: the GEMV decode path is meant to stream MXFP4 weights at HBM speed, which needs 16-byte weight
loads, several of them in flight per thread, and no shared-memory layout conversions (st.shared +
bar.sync) inside the K loop. Those are properties of the compiled code, so this compiles each kernel
the way a real launch at gpt-oss shapes specialises it (pointers 16-byte aligned; an int argument is
marked divisible by 16 only when its value is, exactly as Triton's JIT does: K_WORDS = 2880/8 = 360 is
not) and counts instructions inside the K loop's body in the PTX.

    python3 bench/moe_gemv_ptx.py [--json]           # table (or JSON) for typical GEMV configs
    PYTHONPATH=/path/to/triton-3.6 python3 bench/moe_gemv_ptx.py   # the device's Triton version

tests/ops/test_triton_compile.py asserts the same properties (no conversion in the loop, v4 loads).
"""
from __future__ import annotations

import inspect
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

H = I = 2880  # gpt-oss hidden and intermediate sizes
PTR_TYPES = {"x_ptr": "*bf16", "h_ptr": "*bf16", "out_ptr": "*bf16", "bias_ptr": "*bf16",
             "blk_ptr": "*i32", "scl_ptr": "*u8", "w_ptr": "*fp32", "sorted_ids_ptr": "*i32",
             "expert_ids_ptr": "*i32", "alpha": "fp32", "limit": "fp32"}
COUNTED = {"bar.sync": r"\bbar\.sync\b", "st.shared": r"\bst\.shared", "ld.shared": r"\bld\.shared",
           "ld.global.v4": r"\bld\.global(\.\w+)*\.v4\.", "ld.global": r"\bld\.global",
           "fma": r"\bfma\.rn\.f32\b", "int ops": r"\b(shl|shr|and|or|xor)\.b32\b"}


def launch_ints(stage: str, num_slots: int, split_k: int = 1) -> dict[str, int]:
    """The int arguments a real launch at gpt-oss shapes passes (fused_moe.moe_*_gemv)."""
    if stage == "gate_up":
        return dict(num_slots=num_slots, K_WORDS=H // 8, K_GROUPS=H // 32, I=I, stride_x=H,
                    stride_out=I)
    return dict(num_slots=num_slots, K_WORDS=I // 8, K_GROUPS=I // 32, N=H, stride_h=I,
                stride_out=H)


def compile_gemv(stage: str, consts: dict, ints: dict[str, int], num_warps: int, ir: str = "ptx"):
    """PTX (or `ir`: "ttgir", "cubin", ...) of one GEMV kernel specialised like Triton's JIT would."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from mini_vllm.ops.triton import moe_gemv
    kernel = moe_gemv.moe_gate_up_gemv_kernel if stage == "gate_up" else moe_gemv.moe_down_gemv_kernel
    types = {**PTR_TYPES, "out_ptr": "*bf16" if stage == "gate_up" else "*fp32"}
    names = list(inspect.signature(kernel.fn).parameters)
    sig, attrs = {}, {}
    for i, name in enumerate(names):
        if name in consts:
            sig[name] = "constexpr"
            continue
        sig[name] = types.get(name, "i32")
        if sig[name].startswith("*") or (name in ints and ints[name] % 16 == 0):
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(kernel, sig, constexprs=consts, attrs=attrs)
    out = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                         options={"num_warps": num_warps, "num_stages": 1})
    return out.asm[ir]


def loop_bodies(ptx: str) -> list[list[str]]:
    """Lines of each loop in the PTX: from a label to the last branch back to it."""
    lines = ptx.splitlines()
    loops = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\$L__BB\d+_\d+):", line)
        if not m:
            continue
        back = [k for k in range(i + 1, len(lines))
                if re.search(r"\bbra(\.uni)?\s+" + re.escape(m.group(1)) + ";", lines[k])]
        if back:
            loops.append(lines[i:back[-1] + 1])
    return loops


def count(lines: list[str]) -> dict[str, int]:
    return {k: sum(bool(re.search(p, ln)) for ln in lines) for k, p in COUNTED.items()}


def k_loop_stats(ptx: str) -> dict[str, int]:
    """Counts inside the K loop (the largest loop body) plus whole-kernel shared-memory use."""
    loops = loop_bodies(ptx)
    body = max(loops, key=len) if loops else []
    stats = count(body)
    whole = count(ptx.splitlines())
    stats.update(loops=len(loops), kernel_bar_sync=whole["bar.sync"])
    return stats


def sass_loop_instructions(cubin: bytes) -> int:
    """Instructions in the largest loop of the SASS (nvdisasm from Triton's bundle); -1 if absent."""
    import subprocess
    import tempfile

    import triton
    nvdisasm = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    if not nvdisasm.exists():
        return -1
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([str(nvdisasm), "-c", f.name], capture_output=True, text=True,
                              check=True).stdout.splitlines()
    labels = {m.group(1): i for i, ln in enumerate(sass) if (m := re.match(r"\s*(\.L_x_\d+):", ln))}
    spans = [(labels[m.group(1)], i) for i, ln in enumerate(sass)
             if (m := re.search(r"BRA\s+`?\(?(\.L_x_\d+)", ln)) and labels.get(m.group(1), i) < i]
    if not spans:
        return -1
    lo, hi = max(spans, key=lambda sp: sp[1] - sp[0])
    return sum(bool(re.search(r"/\*[0-9a-f]{4}\*/\s+\S", ln)) for ln in sass[lo:hi + 1])


CASES = [  # (stage, BLOCK_M, BLOCK_N, BLOCK_K, warps, split_k, T): rows per program >= threads
    ("gate_up", 1, 32, 64, 2, 1, 1), ("gate_up", 1, 32, 128, 2, 1, 1), ("gate_up", 1, 64, 128, 2, 1, 1),
    ("gate_up", 1, 32, 128, 2, 2, 1),
    ("gate_up", 1, 64, 64, 4, 1, 1), ("down", 1, 64, 128, 2, 2, 1), ("down", 1, 128, 128, 2, 2, 1),
    ("gate_up", 2, 64, 64, 4, 1, 2), ("down", 2, 128, 64, 4, 1, 2),
    ("gate_up", 4, 128, 64, 8, 1, 8), ("down", 4, 256, 64, 8, 1, 8),
]


def case_stats(stage: str, bm: int, bn: int, bk: int, warps: int, split: int, t: int) -> dict:
    """K-loop counts of one GEMV launch configuration at gpt-oss shapes."""
    consts = dict(HAS_BIAS=True, BLOCK_M=bm, BLOCK_N=bn, GROUPS=bk // 32, DIRECT=bm == 1)
    consts.update(TOP_K=4, SPLIT_K=split) if stage == "gate_up" else consts.update(SPLIT_K=split)
    ptx = compile_gemv(stage, consts, launch_ints(stage, 4 * t, split), warps)
    sass = sass_loop_instructions(compile_gemv(stage, consts, launch_ints(stage, 4 * t, split), warps,
                                               "cubin"))
    rows = bn * (2 if stage == "gate_up" else 1)
    group_rows = bk // 32 * max(1, rows // (32 * warps))  # 16-byte groups one thread handles per step
    name = f"{stage} m{bm} {bn}x{bk} w{warps}" + (f" k/{split}" if split > 1 else "")
    return {"case": name, "groups": bk // 32, **k_loop_stats(ptx), "sass": sass,
            "sass_per_group_row": round(sass / group_rows, 1) if sass > 0 else -1}


def main(argv: list[str]) -> None:
    import json

    import triton
    rows = [case_stats(*case) for case in CASES]
    if "--json" in argv:
        print(json.dumps(rows))
        return
    print(f"triton {triton.__version__}, sm_90a, gpt-oss shapes (H = I = {H}); counts inside the K loop")
    print(f"{'case':28} " + " ".join(f"{k:>12}" for k in COUNTED) + "  kernel-bar.sync  SASS  per-group-row")
    for s in rows:
        print(f"{s['case']:28} " + " ".join(f"{s[k]:>12}" for k in COUNTED)
              + f"  {s['kernel_bar_sync']:>15}  {s['sass']:>4}  {s['sass_per_group_row']:>13}")


if __name__ == "__main__":
    main(sys.argv[1:])
