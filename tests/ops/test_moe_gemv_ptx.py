"""The MoE GEMV's K loop, compiled for sm_90a as a real gpt-oss launch specialises it, streams weights
the way the design needs: 16-byte weight loads (GROUPS of them per iteration) and no shared-memory
layout conversion (st.shared / ld.shared / bar.sync) between the weight tile and the activations.

Why a test: these are properties of Triton's layout choices, which a kernel edit (or a Triton upgrade)
silently changes; the interpreter tests cannot see them. Runs bench/moe_gemv_ptx.py in a clean
subprocess (the interpreter flag is fixed when @triton.jit runs).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_gemv_k_loop_has_vector_loads_and_no_layout_conversion(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "moe_gemv_ptx.py"), "--json"], env=env,
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert rows
    for row in rows:
        assert row["loops"] >= 1, row
        for key in ("bar.sync", "st.shared", "ld.shared"):
            assert row[key] == 0, row
        assert row["ld.global.v4"] >= row["groups"], row  # one 16-byte word load per group and row
