"""Swap-AB MXFP4 MoE GEMM (moe_gemm_swap.py): interpreter runs against the float64 reference, and an
sm_90a compile that checks the PTX really issues wgmma with the weight tile as the MMA's M operand
and copies the packed weights 16 bytes at a time."""
from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import torch

pytest.importorskip("triton")

from mini_vllm.ops.triton.fused_moe import (GemmTiles, MoeConfig, fused_moe_mxfp4,  # noqa: E402
                                            moe_down, moe_gate_up)
from mini_vllm.ops.triton.interpret import interpreted  # noqa: E402
from mini_vllm.ops.triton.moe_align import moe_align_block_size  # noqa: E402
from mini_vllm.ops.triton.mxfp4 import random_moe_weights  # noqa: E402
from mini_vllm.ops.triton.reference import fused_moe_reference  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
ROOT = Path(__file__).resolve().parents[2]


def _route(t: int, e: int, k: int, gen: torch.Generator, skip: tuple[int, ...] = (), hot: int | None = None):
    """Top-k routing; `skip` experts get no rows, `hot` gets most tokens (uneven counts)."""
    logits = torch.randn(t, e, generator=gen)
    logits[:, list(skip)] = -1e9
    if hot is not None:
        logits[: (3 * t) // 4, hot] += 10.0
    vals, ids = torch.topk(logits, k)
    return ids, torch.softmax(vals, dim=-1)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _swap(block_m: int, block_n: int, block_k: int, decode: str = "dot_scaled", down=None) -> MoeConfig:
    return MoeConfig(block_m=block_m, block_n=block_n, block_k=block_k, decode=decode, down=down,
                     kernel="swap")


CASES = [  # (T, E, H, I, k, skipped experts, hot expert, config)
    (13, 8, 64, 96, 4, (0, 5), 2, _swap(16, 32, 64)),                         # 2 empty experts, 1 hot
    (37, 8, 96, 64, 4, (3,), None, _swap(32, 32, 64, "bits",                   # H=96: K tail masks
                                        down=GemmTiles(block_n=64, block_k=32))),
    (90, 16, 64, 64, 4, (), 7, _swap(64, 16, 128, down=GemmTiles(block_n=32, block_k=64,  # 2 T-blocks
                                                                  decode="bits"))),
]


@pytest.fixture()
def _interpreter():
    with interpreted():  # CPU tensors through Triton's interpreter
        yield


@pytest.mark.usefixtures("_interpreter")
@pytest.mark.parametrize("t,e,h,i,k,skip,hot,cfg", CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float16, 3e-3)])
def test_swap_matches_reference(t, e, h, i, k, skip, hot, cfg, dtype, tol):
    gen = torch.Generator().manual_seed(t + 31 * e + h)
    w = random_moe_weights(e, h, i, generator=gen)
    x = (torch.randn(t, h, generator=gen) * 0.15).to(dtype)
    ids, weights = _route(t, e, k, gen, skip, hot)
    counts = torch.bincount(ids.flatten(), minlength=e)
    assert (counts[list(skip)] == 0).all() and counts.max() > cfg.block_m // 2  # the case is as named
    got = fused_moe_mxfp4(x, ids, weights, w, cfg, out=torch.full((t, h), float("nan"), dtype=dtype))
    want = fused_moe_reference(x, ids, weights, w)
    assert got.dtype == dtype and got.shape == (t, h) and torch.isfinite(got).all()
    assert _rel(got, want) < tol


@pytest.mark.usefixtures("_interpreter")
def test_swap_bf16_dot_scaled():
    """The production path: bf16 activations, fp4 operand on the left of tl.dot_scaled (bf16 rounds
    x, act and out: ~7e-3). The interpreter's bf16 "bits" path is wrong for both kernels, grouped
    too (numpy has no bf16), so bits is checked in fp32/fp16 above and on the GPU by the tuner."""
    t, e, h, i, k, skip, hot, cfg = CASES[0]
    test_swap_matches_reference(t, e, h, i, k, skip, hot, cfg, torch.bfloat16, 1.5e-2)


@pytest.mark.usefixtures("_interpreter")
def test_swap_stages_match_grouped_per_slot_and_skip_padding():
    """Each stage alone equals the grouped kernel's (same routing), and padding rows stay untouched."""
    gen = torch.Generator().manual_seed(11)
    t, e, h, i, k, bm = 9, 8, 64, 64, 4, 16
    w = random_moe_weights(e, h, i, generator=gen)
    w.gate_up_bias = None  # HAS_BIAS=False path
    x = torch.randn(t, h, generator=gen) * 0.2
    ids, weights = _route(t, e, k, gen, skip=(1,))
    sorted_ids, expert_ids, _ = moe_align_block_size(ids, e, bm)
    tiles = GemmTiles(block_n=32, block_k=64)
    outs = []
    for swap in (False, True):
        act_buf = torch.full((t * k + 1, i), float("nan"))  # row t*k = the padding sentinel's row
        out_buf = torch.full((t * k + 1, h), float("nan"))
        act, per_slot = act_buf[: t * k], out_buf[: t * k]
        moe_gate_up(x, sorted_ids, expert_ids, w, k, bm, tiles, act, swap)
        moe_down(act, sorted_ids, expert_ids, weights.flatten().contiguous(), w, bm, tiles, per_slot, swap)
        assert torch.isfinite(act).all() and torch.isfinite(per_slot).all()
        assert act_buf[-1].isnan().all() and out_buf[-1].isnan().all()  # padding rows never stored
        outs.append((act, per_slot))
    for grouped, swapped in zip(*outs):
        assert _rel(swapped, grouped) < 1e-6


def test_swap_is_a_config_kernel():
    cfg = MoeConfig.from_dict(_swap(32, 64, 128, down=GemmTiles(block_n=128)).to_dict())
    assert cfg.kernel == "swap" and cfg.block_m == 32 and cfg.down_tiles().block_n == 128


DIVISIBLE = {"K", "K_HALF", "I", "N", "stride_x", "stride_h", "stride_out"}
VARIANTS = [  # (BLOCK_M = routed rows = MMA N, BLOCK_N, BLOCK_K, DECODE, num_warps)
    (16, 32, 128, 1, 4), (32, 64, 128, 1, 4), (64, 64, 256, 1, 8), (32, 64, 128, 0, 4)]


def compile_swap() -> list[str]:
    """Compile both swap kernels for sm_90a (bf16 activations); one line each with the MMA it uses."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from mini_vllm.ops.triton import moe_gemm_swap as swap
    ptr = {"x_ptr": "*bf16", "h_ptr": "*bf16", "out_ptr": "*bf16", "bias_ptr": "*bf16", "blk_ptr": "*i32",
           "scl_ptr": "*u8", "w_ptr": "*fp32", "sorted_ids_ptr": "*i32", "expert_ids_ptr": "*i32",
           "alpha": "fp32", "limit": "fp32"}
    lines = []
    for bm, bn, bk, decode, warps in VARIANTS:
        for kernel, extra, types in ((swap.moe_gate_up_swap_kernel, {"TOP_K": 4}, ptr),
                                     (swap.moe_down_swap_kernel, {}, {**ptr, "out_ptr": "*fp32"})):
            consts = dict(HAS_BIAS=True, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, EVEN_K=False,
                          DECODE=decode, **extra)
            sig = {n: "constexpr" if n in consts else types.get(n, "i32")
                   for n in inspect.signature(kernel.fn).parameters}
            # what Triton's launcher marks at gpt-oss shapes (H = I = 2880: K_GROUPS = 90 is not)
            attrs = {(j,): [["tt.divisibility", 16]] for j, n in enumerate(sig)
                     if n.endswith("_ptr") or n in DIVISIBLE}
            out = triton.compile(ASTSource(kernel, sig, constexprs=consts, attrs=attrs),
                                 target=GPUTarget("cuda", 90, 32),
                                 options={"num_warps": warps, "num_stages": 3})
            mma = sorted(set(re.findall(r"(wgmma\.mma_async\.sync\.aligned\.m\d+n\d+k\d+|mma\.sync)",
                                        out.asm["ptx"])))
            copies = sorted(set(re.findall(r"cp\.async\.c[ag]\.shared\.global[^,]*,[^,]*, (0x\w+)",
                                           out.asm["ptx"])))
            lines.append(f"{kernel.fn.__name__} bm={bm} bn={bn} bk={bk} decode={decode}: "
                         f"mma={','.join(mma) or 'none'} cp.async={','.join(copies)} "
                         f"shared={out.metadata.shared}")
    return lines


@pytest.mark.timeout(240)
def test_swap_compiles_for_sm90a_with_wgmma(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path / "cache"), TRITON_DEFAULT_FP_FUSION="1",
               PYTHONPATH=str(ROOT / "python") + os.pathsep + env.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=220)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [ln for ln in proc.stdout.splitlines() if "mma=" in ln]
    assert len(lines) == 2 * len(VARIANTS), proc.stdout
    for line, (bm, bn, *_tiles) in zip(lines, [v for v in VARIANTS for _ in range(2)]):
        # weight rows fill the warpgroup MMA's M (64); routed rows are its N (split over warpgroups
        # when 8 warps share a 64-row tile). Fewer than 64 weight rows (down with block_n=32) fall
        # back to mma.sync - the tuner's swap candidates keep >= 64.
        rows = 2 * bn if "gate_up" in line else bn
        n = re.findall(r"wgmma\.mma_async\.sync\.aligned\.m64n(\d+)k16", line)
        assert "cp.async=0x10 " in line, line  # weights (int32 words) and x: 16-byte copies only
        if rows >= 64:
            assert n and all(bm % int(v) == 0 for v in n) and "mma.sync" not in line, line
        else:
            assert not n and "mma.sync" in line, line


if __name__ == "__main__":
    for line in compile_swap():
        print(line, flush=True)
