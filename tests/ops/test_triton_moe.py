"""Fused MXFP4 MoE (Triton, run in the interpreter on CPU) against the float64 torch reference."""
from __future__ import annotations

import pytest

import torch

pytest.importorskip("triton")

import json  # noqa: E402

from mini_vllm.ops.triton import fused_moe  # noqa: E402
from mini_vllm.ops.triton.fused_moe import (GemmTiles, MoeConfig, fused_moe_mxfp4,  # noqa: E402
                                            pick_config)
from mini_vllm.ops.triton.interpret import interpreted  # noqa: E402
from mini_vllm.ops.triton.moe_align import moe_align_block_size  # noqa: E402
from mini_vllm.ops.reference import E2M1_VALUES  # noqa: E402
from mini_vllm.ops.reference import dequant_mxfp4 as dequant_mxfp4_reference  # noqa: E402
from mini_vllm.ops.triton.mxfp4 import random_moe_weights  # noqa: E402
from mini_vllm.ops.triton.reference import fused_moe_reference  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")


@pytest.fixture(autouse=True)
def _interpreter():
    with interpreted():  # CPU tensors through Triton's interpreter
        yield


def _route(t: int, e: int, k: int, gen: torch.Generator, skip_expert: int | None = None):
    logits = torch.randn(t, e, generator=gen)
    if skip_expert is not None:
        logits[:, skip_expert] = -1e9  # this expert gets no tokens
    vals, ids = torch.topk(logits, k)
    return ids, torch.softmax(vals, dim=-1)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_decoder_matches_e2m1_definition():
    """Every byte value decodes to (low, high) per the OCP e2m1 table, times 2^(s-127)."""
    blocks = torch.arange(256, dtype=torch.uint8).view(1, 16, 16)  # N=1, K=512
    scales = torch.tensor([[120, 127, 130, 127, 1, 254, 127, 127, 127, 127, 127, 127, 127, 127,
                            127, 127]], dtype=torch.uint8)
    dense = dequant_mxfp4_reference(blocks, scales, torch.float64)[0]
    for byte in range(256):
        blk, j = divmod(byte, 16)
        s = 2.0 ** (int(scales[0, blk]) - 127)
        for nib, k in ((byte & 15, 32 * blk + 2 * j), (byte >> 4, 32 * blk + 2 * j + 1)):
            want = (-1 if nib & 8 else 1) * E2M1_VALUES[nib & 7] * s
            assert dense[k].item() == want, (byte, nib)


@pytest.mark.parametrize("t,e,k,block_m", [(1, 4, 2, 16), (13, 8, 4, 16), (20, 4, 2, 32), (3, 8, 3, 4),
                                           (150, 8, 4, 16)])  # 600 slots: several align chunks
def test_align_groups_every_slot_once(t, e, k, block_m):
    gen = torch.Generator().manual_seed(t * 100 + e)
    ids, _ = _route(t, e, k, gen, skip_expert=e - 1)
    sorted_ids, expert_ids, num_padded = moe_align_block_size(ids, e, block_m)
    used = int(num_padded)
    assert used % block_m == 0 and used <= sorted_ids.numel()
    flat = ids.flatten()
    rows = sorted_ids[:used].view(-1, block_m)
    assert sorted(rows[rows < t * k].tolist()) == list(range(t * k))
    for b, row in enumerate(rows):
        real = row[row < t * k]
        assert (flat[real.long()] == expert_ids[b]).all()  # every slot sits in its expert's block
        assert (real.diff() > 0).all()                     # stable: ascending slots
    assert (expert_ids[: used // block_m].diff() >= 0).all()
    assert (expert_ids[used // block_m:] == -1).all()
    assert (expert_ids != e - 1).all()                     # the skipped expert owns no block
    counts = torch.bincount(flat, minlength=e)
    assert used == int(((counts + block_m - 1) // block_m * block_m).sum())


CASES = [  # (T, E, H, I, k, config); decode "bits" forced for fp32 activations
    (1, 4, 64, 64, 2, None),
    (7, 8, 64, 96, 4, MoeConfig(block_m=16, block_n=32, block_k=64)),
    (7, 8, 64, 96, 4, MoeConfig(block_m=16, block_n=16, block_k=64, decode="bits",
                                down=GemmTiles(block_n=64, block_k=32, decode="dot_scaled"))),
    (19, 4, 128, 64, 2, MoeConfig(block_m=16, block_n=64, block_k=128)),
    (20, 8, 96, 64, 3, MoeConfig(block_m=32, block_n=32, block_k=64)),     # H=96: K-tail masks
]


@pytest.mark.parametrize("t,e,h,i,k,cfg", CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float16, 3e-3)])
def test_fused_moe_matches_reference(t, e, h, i, k, cfg, dtype, tol):
    gen = torch.Generator().manual_seed(t + 31 * e + h)
    w = random_moe_weights(e, h, i, generator=gen)
    x = (torch.randn(t, h, generator=gen) * 0.15).to(dtype)
    ids, weights = _route(t, e, k, gen, skip_expert=0 if e > k else None)
    got = fused_moe_mxfp4(x, ids, weights, w, cfg, out=torch.full((t, h), float("nan"), dtype=dtype))
    want = fused_moe_reference(x, ids, weights, w)
    assert got.dtype == dtype and got.shape == (t, h)
    assert torch.isfinite(got).all()
    assert _rel(got, want) < tol


GEMV_CASES = [  # (T, E, H, I, k, config): the decode kernel, T = 1..8
    (1, 4, 64, 64, 2, MoeConfig(block_m=1, block_n=16, block_k=64, kernel="gemv")),
    (2, 8, 96, 64, 4, MoeConfig(block_m=1, block_n=8, block_k=64, kernel="gemv",   # H=96: K tails
                                down=GemmTiles(block_n=16, block_k=32, split_k=3))),
    (5, 8, 64, 96, 4, MoeConfig(block_m=2, block_n=32, block_k=32, kernel="gemv",   # align grouping
                                down=GemmTiles(block_n=32, block_k=64, split_k=2))),
    (8, 8, 64, 64, 4, MoeConfig(block_m=4, block_n=16, block_k=128, kernel="gemv")),
]


@pytest.mark.parametrize("t,e,h,i,k,cfg", GEMV_CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float16, 3e-3)])
def test_gemv_matches_reference(t, e, h, i, k, cfg, dtype, tol):
    test_fused_moe_matches_reference(t, e, h, i, k, cfg, dtype, tol)


def test_gemv_rejects_bad_tiles():
    gen = torch.Generator().manual_seed(3)
    w = random_moe_weights(4, 64, 64, generator=gen)
    ids, weights = _route(2, 4, 2, gen)
    x = torch.randn(2, 64)
    with pytest.raises(ValueError, match="split_k"):
        fused_moe_mxfp4(x, ids, weights, w, MoeConfig(block_m=1, block_n=16, block_k=64, kernel="gemv",
                                                      split_k=2))
    with pytest.raises(ValueError, match="block_k"):
        fused_moe_mxfp4(x, ids, weights, w, MoeConfig(block_m=1, block_n=16, block_k=96, kernel="gemv"))
    with pytest.raises(ValueError, match="kernel must be"):
        MoeConfig.from_dict({"block_m": 1, "kernel": "magic"})


def test_fused_moe_without_bias():
    """Biases are optional (HAS_BIAS=False path)."""
    gen = torch.Generator().manual_seed(5)
    w = random_moe_weights(4, 64, 64, generator=gen)
    w.gate_up_bias = None
    w.down_bias = None
    x = torch.randn(5, 64, generator=gen) * 0.2
    ids, weights = _route(5, 4, 2, gen)
    got = fused_moe_mxfp4(x, ids, weights, w, MoeConfig(block_m=16, block_n=32, block_k=64))
    assert _rel(got, fused_moe_reference(x, ids, weights, w)) < 2e-5


def test_fused_moe_rejects_bad_shapes():
    gen = torch.Generator().manual_seed(0)
    w = random_moe_weights(4, 64, 64, generator=gen)
    ids, weights = _route(3, 4, 2, gen)
    with pytest.raises(ValueError, match="x must be"):
        fused_moe_mxfp4(torch.randn(3, 32), ids, weights, w)
    with pytest.raises(ValueError, match="topk_weights"):
        fused_moe_mxfp4(torch.randn(3, 64), ids, weights[:, :1], w)
    w.down_scales = w.down_scales[:, :, :1]
    with pytest.raises(ValueError, match="down_scales"):
        fused_moe_mxfp4(torch.randn(3, 64), ids, weights, w)


def test_shipped_table_uses_gemv_for_decode_and_big_tiles_for_prefill():
    small, big = pick_config(1, 4, 32), pick_config(4096, 4, 32)
    assert small.kernel == "gemv" and big.kernel == "grouped" and big.block_m >= 64


def test_config_table_is_data(tmp_path, monkeypatch):
    """A tuned table (the shape bench/device_tune_moe.py writes) is picked up without code changes."""
    cfg = MoeConfig(block_m=32, block_n=16, block_k=64, decode="bits",
                    down=GemmTiles(block_n=128, block_k=256, num_warps=8, num_stages=2))
    gemv = MoeConfig(block_m=1, block_n=16, block_k=256, kernel="gemv",
                     down=GemmTiles(block_n=16, block_k=256, split_k=4))
    table = {"buckets": [{"max_tokens": 1, **gemv.to_dict()}, {"max_tokens": 2, **MoeConfig().to_dict()},
                         {"max_tokens": 10**9, **cfg.to_dict()}]}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(table))
    monkeypatch.setattr(fused_moe, "_TABLE_IN_USE", None)       # restored after the test
    fused_moe.use_config_table(str(path))                         # what the engine does for --moe-configs
    assert pick_config(1, 4, 32) == gemv and gemv.down_tiles().split_k == 4
    assert pick_config(2, 4, 32) == MoeConfig().from_dict(MoeConfig().to_dict())
    assert pick_config(3, 4, 32) == cfg
    path2 = tmp_path / "bad.json"
    path2.write_text('{"buckets": [{"max_tokens": 1}]}')
    with pytest.raises(ValueError, match="bad MoE config table"):
        pick_config(1, 4, 32, table=str(path2))
