"""The bit-level scheme of kernels/gemv_mma.cu, replayed in numpy (the kernel itself is compiled for sm_90a
by test_kernels_build.py and checked against torch on the GPU by bench/device_check_gemv.py).

Two facts the kernel relies on and that a typo in a mask or a byte selector would break:
1. `fp4_pairs`: shifting and masking an MXFP4 word puts nibbles (0,4) (1,5) (2,6) (3,7) into bf16x2 halves
   worth e2m1 x 2^-126 exactly, and one multiply by 2^(s-1) gives e2m1 x 2^(s-127) (every nibble, all scales
   up to 128; the two-multiply variant above);
2. the k order inside each mma: weight pairs from (1) and activation pairs made by `prmt` with selectors
   0x5410 / 0x7632 from the same 16 bytes of x line up, so the mma's sum equals the plain dot product.
"""
from __future__ import annotations

import numpy as np

from mini_vllm.ops.reference import E2M1_VALUES

M_MAG, M_SIGN = np.uint32(0x01C001C0), np.uint32(0x80008000)


def fp4_pairs(w: np.ndarray) -> list[np.ndarray]:
    w = w.astype(np.uint32)
    return [((w << 6) & M_MAG) | ((w << 12) & M_SIGN), ((w << 2) & M_MAG) | ((w << 8) & M_SIGN),
            ((w >> 2) & M_MAG) | ((w << 4) & M_SIGN), ((w >> 6) & M_MAG) | (w & M_SIGN)]


def bf16(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def halves(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return bf16(r & 0xFFFF), bf16(r >> 16)


def prmt(a: np.ndarray, b: np.ndarray, sel: int) -> np.ndarray:
    src = [(a >> (8 * i)) & 0xFF for i in range(4)] + [(b >> (8 * i)) & 0xFF for i in range(4)]
    return sum(src[(sel >> (4 * i)) & 7].astype(np.uint32) << (8 * i) for i in range(4)).astype(np.uint32)


def nibble_values(w: np.ndarray, n: int) -> np.ndarray:
    return np.asarray(E2M1_VALUES, dtype=np.float64)[(w >> (4 * n)) & 0xF]


def test_fp4_pairs_decode_every_nibble_exactly():
    rng = np.random.default_rng(0)
    w = np.concatenate([rng.integers(0, 2 ** 32, 4096, dtype=np.uint64),
                        np.arange(256, dtype=np.uint64) * 0x01010101]).astype(np.uint32)
    for s in (1, 100, 120, 127, 128):
        for r, (lo, hi) in zip(fp4_pairs(w), [(0, 4), (1, 5), (2, 6), (3, 7)]):
            a, b = halves(r)
            factor = 2.0 ** 126 * 2.0 ** (s - 127)          # the bf16x2 multiply by 2^(s-1), exact
            assert np.array_equal(a * factor, nibble_values(w, lo) * 2.0 ** (s - 127))
            assert np.array_equal(b * factor, nibble_values(w, hi) * 2.0 ** (s - 127))


def test_mma_k_order_matches_the_plain_dot():
    rng = np.random.default_rng(1)
    for _ in range(50):
        words = rng.integers(0, 2 ** 32, 4, dtype=np.uint64).astype(np.uint32)      # one 32-value group
        x = rng.standard_normal(32).astype(np.float32)
        xbits = (x.view(np.uint32) >> 16).astype(np.uint32)                          # bf16 (truncated)
        xw = xbits[0::2] | (xbits[1::2] << 16)                                       # 16 words: (x0,x1) ...
        want = sum(nibble_values(words[n // 8], n % 8) * bf16(xbits[n]) for n in range(32))
        got = 0.0
        for i in range(4):
            r = fp4_pairs(words[i:i + 1])
            u = xw[4 * i:4 * i + 4]
            for h in range(2):   # mma (i, h): A pairs r[2h] (k 2t, 2t+1), r[2h+1] (k 2t+8, 2t+9)
                b0, b1 = prmt(u[h:h + 1], u[h + 2:h + 3], 0x5410), prmt(u[h:h + 1], u[h + 2:h + 3], 0x7632)
                for a, b in ((r[2 * h], b0), (r[2 * h + 1], b1)):
                    (a_lo, a_hi), (b_lo, b_hi) = halves(a), halves(b)
                    got += float((a_lo * b_lo + a_hi * b_hi)[0]) * 2.0 ** 126
        assert abs(got - float(want)) <= 1e-9 * max(1.0, abs(float(want)))
