"""The paged attention reference (CPU runtime + FA3's oracle) against transformers' dense GptOss attention.

transformers' eager_attention_forward is run per sequence on the contiguous K/V with an additive mask
(causal, optionally sliding 128-style window) and its sinks; ours gathers the same keys from scattered
pages of a block cache. GQA, varlen queries (prefill + decode rows in one batch) and empty sequences.
"""
from __future__ import annotations

import types

import pytest
import torch

from mini_vllm.ops.attention_fa3 import paged_attention
from mini_vllm.ops.reference import paged_attention as paged_reference

gpt_oss = pytest.importorskip("transformers.models.gpt_oss.modeling_gpt_oss")


def _dense(q, k, v, sinks, scale, causal, window):
    """transformers on one sequence: q [Nq, Hq, D] (last Nq positions), k/v [Nk, Hk, D]."""
    nq, hq, _ = q.shape
    nk, hk, _ = k.shape
    qpos = torch.arange(nk - nq, nk)[:, None]
    kpos = torch.arange(nk)[None, :]
    allowed = torch.ones(nq, nk, dtype=torch.bool)
    if causal:
        allowed &= kpos <= qpos
    if window is not None:
        allowed &= kpos > qpos - window
    mask = torch.zeros(nq, nk).masked_fill(~allowed, float("-inf"))[None, None]
    module = types.SimpleNamespace(num_key_value_groups=hq // hk, sinks=sinks, training=False)
    out, _ = gpt_oss.eager_attention_forward(module, q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                             v.transpose(0, 1)[None], mask, scaling=scale)
    return out[0]                                               # [Nq, Hq, D]


def _paged_case(seed: int, lens_k: list[int], lens_q: list[int], hq=8, hk=2, d=64, page=16, num_pages=40):
    g = torch.Generator().manual_seed(seed)
    kc = torch.randn(num_pages, page, hk, d, generator=g)
    vc = torch.randn(num_pages, page, hk, d, generator=g)
    max_pages = max((n + page - 1) // page for n in lens_k)
    perm = torch.randperm(num_pages, generator=g)              # pages scattered, not in order
    table = torch.zeros(len(lens_k), max_pages, dtype=torch.int32)
    used = 0
    for i, n in enumerate(lens_k):
        np_ = (n + page - 1) // page
        table[i, :np_] = perm[used:used + np_].to(torch.int32)
        used += np_
    q = torch.randn(sum(lens_q), hq, d, generator=g)
    cu = torch.tensor([0] + list(torch.tensor(lens_q).cumsum(0)), dtype=torch.int32)
    sinks = torch.randn(hq, generator=g)
    return q, kc, vc, table, cu, torch.tensor(lens_k, dtype=torch.int32), sinks


@pytest.mark.parametrize("causal,window,with_sinks", [(True, None, True), (True, 128, True), (True, 5, False),
                                                      (False, None, True)])
def test_paged_reference_matches_transformers_dense(causal, window, with_sinks):
    lens_k, lens_q = [37, 1, 160, 0, 20], [37, 1, 9, 0, 1]     # prefill, decode, chunked prefill, empty, decode
    q, kc, vc, table, cu, used, sinks = _paged_case(0, lens_k, lens_q)
    sinks = sinks if with_sinks else None
    scale = 0.125
    out = paged_attention(q, kc, vc, table, cu, used, max(lens_q), max(lens_k), causal=causal,
                          sliding_window=window, sinks=sinks, softmax_scale=scale)
    assert out.shape == q.shape
    for i, (nk, nq) in enumerate(zip(lens_k, lens_q)):
        if nq == 0:
            continue
        s = int(cu[i])
        pages = table[i, :(nk + 15) // 16].long()
        k = kc[pages].reshape(-1, 2, 64)[:nk]
        v = vc[pages].reshape(-1, 2, 64)[:nk]
        sink_t = sinks if sinks is not None else torch.full((8,), float("-inf"))
        ref = _dense(q[s:s + nq], k, v, sink_t, scale, causal, window)
        torch.testing.assert_close(out[s:s + nq], ref, rtol=1e-5, atol=1e-5)


def test_sinks_and_window_change_the_result():
    q, kc, vc, table, cu, used, sinks = _paged_case(1, [200], [4])
    base = paged_reference(q, kc, vc, table, cu, used)
    assert not torch.allclose(base, paged_reference(q, kc, vc, table, cu, used, sinks=sinks))
    assert not torch.allclose(base, paged_reference(q, kc, vc, table, cu, used, sliding_window=128))


def test_bf16_output_dtype_and_too_few_keys_rejected():
    q, kc, vc, table, cu, used, _ = _paged_case(2, [20], [3])
    out = paged_reference(q.bfloat16(), kc.bfloat16(), vc.bfloat16(), table, cu, used)
    assert out.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="only 2 keys"):
        paged_reference(q, kc, vc, table, cu, torch.tensor([2], dtype=torch.int32))


def test_fa3_workspace_reserves_splits_only_for_small_steps():
    """FA3 splits the KV only for steps too small to fill the GPU: decode batches up to 1,024 (64 heads)
    keep 16 splits' room, a long prefill chunk gets 1 (16 would be 2 GiB at 8,192 tokens, found by an
    OOM on an H100 at 1,024 concurrent streams)."""
    from mini_vllm.ops.attention_fa3 import HEURISTIC_SPLITS_CAP, heuristic_splits_cap

    assert heuristic_splits_cap(1, 64) == heuristic_splits_cap(1024, 64) == HEURISTIC_SPLITS_CAP == 16
    assert heuristic_splits_cap(8192, 64) == heuristic_splits_cap(2048, 64) == 1
    assert heuristic_splits_cap(2048, 32) == 16      # a TP-2 shard has half the heads: half the rows
