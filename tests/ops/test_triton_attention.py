"""Paged attention (Triton, interpreter on CPU) against gather + dense float64 attention in torch."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from mini_vllm.ops.triton.interpret import interpreted  # noqa: E402
from mini_vllm.ops.triton.paged_attention import paged_attention, pick_num_splits  # noqa: E402
from mini_vllm.ops.reference import paged_attention as paged_attention_reference  # noqa: E402


@pytest.fixture(autouse=True)
def _interpreter():
    with interpreted():  # CPU tensors through Triton's interpreter
        yield


def _batch(q_lens, kv_lens, hq, hkv, dim, block_size, dtype, gen):
    """Random q and a shuffled paged cache (blocks of different sequences interleave)."""
    need = [(n + block_size - 1) // block_size for n in kv_lens]
    num_blocks = sum(need) + 3
    perm = torch.randperm(num_blocks, generator=gen).int()
    tables = torch.zeros(len(kv_lens), max(need), dtype=torch.int32)
    at = 0
    for b, n in enumerate(need):
        tables[b, :n] = perm[at:at + n]
        at += n
    cu = torch.tensor([0] + torch.tensor(q_lens).cumsum(0).tolist(), dtype=torch.int32)
    k_cache = torch.randn(num_blocks, block_size, hkv, dim, generator=gen).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, hkv, dim, generator=gen).to(dtype)
    q = torch.randn(int(cu[-1]), hq, dim, generator=gen).to(dtype)
    return q, k_cache, v_cache, cu, torch.tensor(kv_lens, dtype=torch.int32), tables


CASES = [  # (q_lens, kv_lens, Hq, Hkv, block_size, window, sinks, splits)
    ([1], [1], 8, 1, 16, 0, True, None),                        # first decode step: one key
    ([1, 1, 1], [37, 5, 64], 8, 2, 16, 0, True, None),         # decode batch, GQA 4
    ([1, 5, 19], [37, 5, 50], 8, 2, 16, 8, True, 1),          # mixed prefill chunks + sliding window
    ([1, 5, 19], [37, 5, 50], 8, 2, 16, 8, True, 3),          # same, split-K + combine
    ([3, 17], [40, 17], 4, 4, 8, 0, False, 1),                # MHA, no sinks, cache block 8 < BLOCK_N
    ([1, 2], [90, 70], 16, 2, 16, 0, False, 4),               # GQA 8 (GPT-OSS), split, no sinks
    ([2, 1], [130, 300], 16, 2, 16, 128, True, None),         # window 128 on long contexts, auto split
]


@pytest.mark.parametrize("q_lens,kv_lens,hq,hkv,bs,window,use_sinks,splits", CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-3)])
def test_paged_attention_matches_reference(q_lens, kv_lens, hq, hkv, bs, window, use_sinks, splits,
                                           dtype, tol):
    gen = torch.Generator().manual_seed(sum(kv_lens) + hq)
    q, kc, vc, cu, seq_lens, tables = _batch(q_lens, kv_lens, hq, hkv, 64, bs, dtype, gen)
    sinks = torch.randn(hq, generator=gen) * 2 if use_sinks else None
    out = torch.full_like(q, float("nan"))  # every row must be written
    got = paged_attention(q, kc, vc, cu, seq_lens, tables, max_seqlen_q=max(q_lens),
                          max_seqlen_k=max(kv_lens), scale=0.125, sinks=sinks, window=window,
                          num_splits=splits, out=out)
    want = paged_attention_reference(q, kc, vc, tables, cu, seq_lens, softmax_scale=0.125, sinks=sinks,
                                     sliding_window=window, compute_dtype=torch.float64)
    assert got is out and torch.isfinite(got).all()
    err = ((got.double() - want.double()).norm() / want.double().norm()).item()
    assert err < tol


def test_sinks_change_the_result():
    """A large sink soaks up probability mass: outputs shrink towards zero, as the reference says."""
    gen = torch.Generator().manual_seed(1)
    q, kc, vc, cu, seq_lens, tables = _batch([1], [20], 8, 2, 64, 16, torch.float32, gen)
    args = (q, kc, vc, cu, seq_lens, tables)
    plain = paged_attention(*args, max_seqlen_q=1)
    sunk = paged_attention(*args, max_seqlen_q=1, sinks=torch.full((8,), 30.0))
    assert sunk.abs().max() < 1e-3 * plain.abs().max()


def test_split_heuristic():
    assert pick_num_splits(num_programs=8, max_seqlen_k=8192, block_n=32) > 1
    assert pick_num_splits(num_programs=8, max_seqlen_k=64, block_n=32) == 1
    assert pick_num_splits(num_programs=512, max_seqlen_k=8192, block_n=32) == 1


def test_rejects_bad_shapes():
    gen = torch.Generator().manual_seed(0)
    q, kc, vc, cu, seq_lens, tables = _batch([1], [4], 6, 4, 64, 16, torch.float32, gen)
    with pytest.raises(ValueError, match="multiple"):
        paged_attention(q, kc, vc, cu, seq_lens, tables, max_seqlen_q=1)
    with pytest.raises(ValueError, match="head_dim"):
        paged_attention(q[..., :32], kc, vc, cu, seq_lens, tables, max_seqlen_q=1)
