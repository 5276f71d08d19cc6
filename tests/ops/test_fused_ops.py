"""The fused router+top-k and RoPE+KV-write ops on the CPU: their fallbacks, and the start-up self-check.

The CUDA kernels themselves cannot run here (bench/device_check_kernels.py checks them on the H100 and
tests/ops/test_kernels_build.py compiles them). What runs here: the ops' torch paths against
transformers / the separate ops, and the self-check that decides at start-up whether the fused kernels
are used - fed deliberately wrong "fused" results, it must refuse them and say why.
"""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers.models.gpt_oss import modeling_gpt_oss as gpt_oss
from transformers.models.gpt_oss.configuration_gpt_oss import GptOssConfig as HFGptOssConfig

from mini_vllm import ops
from mini_vllm.model import cuda_forward
from mini_vllm.ops import reference, selfcheck
from mini_vllm.ops.ext import KernelError


def test_router_topk_matches_transformers_router():
    torch.manual_seed(5)
    router = gpt_oss.GptOssTopKRouter(HFGptOssConfig(hidden_size=256, num_local_experts=32, num_experts_per_tok=4))
    with torch.no_grad():
        router.weight.normal_()
        router.bias.normal_()
    h = torch.randn(11, 256)
    _, scores, indices = router(h)
    out = (torch.full((11, 4), -1, dtype=torch.int32), torch.full((11, 4), float("nan")))
    idx, w = ops.router_topk(h, router.weight.detach(), router.bias.detach(), 4, out=out)
    assert idx is out[0] and w is out[1]
    assert torch.equal(idx.long(), indices)
    torch.testing.assert_close(w, scores, rtol=1e-6, atol=1e-6)


def _qkv_views(buf: torch.Tensor, hq: int, hk: int, d: int):
    t = buf.shape[0]
    return (buf[:, :hq * d].view(t, hq, d), buf[:, hq * d:(hq + hk) * d].view(t, hk, d),
            buf[:, (hq + hk) * d:].view(t, hk, d))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("into_q_out", [False, True])
def test_rope_write_kv_equals_rope_then_write(dtype, into_q_out):
    torch.manual_seed(7)
    hq, hk, d, t = 8, 2, 64, 9
    cos_sin = ops.cos_sin_cache(512)
    qkv = torch.randn(t, (hq + 2 * hk) * d).to(dtype)
    pos = torch.randint(0, 512, (t,))
    slots = torch.tensor([5, -1, 17, 63, -1, 0, 40, 41, 2])
    a, b = qkv.clone(), qkv.clone()
    ka, va = torch.full((4, 16, hk, d), float("nan"), dtype=dtype), torch.full((4, 16, hk, d), float("nan"), dtype=dtype)
    kb, vb = ka.clone(), va.clone()
    qa_, ka_, va_ = _qkv_views(a, hq, hk, d)
    q_out = torch.full((t, hq, d), float("nan"), dtype=dtype) if into_q_out else None
    q_rot = ops.rope_write_kv(qa_, ka_, va_, ka, va, pos, slots, cos_sin, q_out=q_out)
    qb_, kb_, vb_ = _qkv_views(b, hq, hk, d)
    reference.apply_rope(qb_, kb_, pos, cos_sin)
    reference.write_kv_cache(kb_, vb_, kb, vb, slots)
    assert q_rot is (q_out if into_q_out else qa_) and torch.equal(q_rot, qb_)
    if into_q_out:                                               # q left as it was, k rotated in place
        assert torch.equal(a[:, :hq * d], qkv[:, :hq * d]) and torch.equal(a[:, hq * d:], b[:, hq * d:])
    else:                                                        # q and k rotated in place
        assert torch.equal(a, b)
    assert torch.equal(a[:, (hq + hk) * d:], qkv[:, (hq + hk) * d:])   # v untouched
    assert torch.equal(ka.nan_to_num(3.0), kb.nan_to_num(3.0)) and torch.equal(va.nan_to_num(3.0), vb.nan_to_num(3.0))
    assert int((~ka.isnan()).any(-1).any(-1).sum()) == 7          # two -1 slots written nowhere


def test_routing_problem_accepts_near_ties_and_rejects_wrong_routings():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 2.0 - 1 / 64, -1.0], [0.5, 0.0, 2.0, 2.0 + 1 / 64, -3.0, 1.0]])
    ids, w = reference.route_topk(logits, 3)
    assert selfcheck.routing_problem(ids, w, logits, 3) is None
    # a near-tie (within 2 bf16 ulps of the row's largest logit) taken the other way: expert 4 for 2
    alt = ids.clone()
    alt[0, 2] = 4
    assert selfcheck.routing_problem(alt, torch.softmax(logits.gather(1, alt.long()), -1), logits, 3) is None
    wrong = ids.clone()
    wrong[1, 2] = 4                                                  # logit -3: not among the top 3
    assert "outside the top-k" in selfcheck.routing_problem(wrong, w, logits, 3)
    dup = ids.clone()
    dup[0, 1] = dup[0, 0]
    assert "twice" in selfcheck.routing_problem(dup, w, logits, 3)
    oob = ids.clone()
    oob[1, 0] = 6
    assert "out of range" in selfcheck.routing_problem(oob, w, logits, 3)
    assert "weights differ" in selfcheck.routing_problem(ids, torch.full_like(w, 1 / 3), logits, 3)
    assert "shapes" in selfcheck.routing_problem(ids[:, :2], w[:, :2], logits, 3)


def _router(seed: int = 1, e: int = 32, h: int = 128):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(e, h, generator=g).to(torch.bfloat16), torch.randn(e, generator=g).to(torch.bfloat16)


def test_router_self_check_refuses_wrong_fused_results(monkeypatch):
    w, b = _router()
    assert selfcheck.router_topk_problem(w, b, 4) is None               # the real op (CPU: its torch path)
    real = ops.router_topk

    def bottom_k(x, weight, bias, top_k, fused=True):
        logits = F.linear(x, weight, bias).float()
        v, i = torch.topk(-logits, top_k)
        return i.to(torch.int32), torch.softmax(-v, -1)

    def softmax_over_all(x, weight, bias, top_k, fused=True):   # softmax over all E, then pick: wrong weights
        p = torch.softmax(F.linear(x, weight, bias).float(), -1)
        v, i = torch.topk(p, top_k)
        return i.to(torch.int32), v

    def raises(*a, **k):
        raise KernelError("mv_router_topk failed with CUDA error 700 (cudaErrorIllegalAddress)")

    def no_bias(x, weight, bias, top_k, fused=True):
        return real(x, weight, None, top_k, fused=fused)

    for fake, expect in [(bottom_k, "outside the top-k"), (softmax_over_all, "weights differ"),
                         (raises, "cudaErrorIllegalAddress"), (no_bias, "")]:
        monkeypatch.setattr(ops, "router_topk", fake)
        problem = selfcheck.router_topk_problem(w, b, 4)
        assert problem is not None and expect in problem, (fake.__name__, problem)


def test_rope_kv_self_check_refuses_wrong_fused_results(monkeypatch):
    assert selfcheck.rope_write_kv_problem(8, 2, 64, torch.bfloat16, torch.device("cpu")) is None

    real = ops.rope_write_kv

    def q_dest(q, q_out):   # where the rotated q goes, as the real op does it
        return q if q_out is None else q_out.copy_(q)

    def write_then_rotate(q, k, v, kc, vc, pos, slots, cos_sin, fused=True, q_out=None):   # unrotated k cached
        ops.write_kv_cache(k, v, kc, vc, slots)
        return ops.apply_rope(q_dest(q, q_out), k, pos, cos_sin)[0]

    def writes_minus_one(q, k, v, kc, vc, pos, slots, cos_sin, fused=True, q_out=None):   # -1: the last slot
        q, _ = ops.apply_rope(q_dest(q, q_out), k, pos, cos_sin)
        kc.view(-1, *kc.shape[2:])[slots] = k
        vc.view(-1, *vc.shape[2:])[slots] = v
        return q

    def q_not_rotated(q, k, v, kc, vc, pos, slots, cos_sin, fused=True, q_out=None):
        q0 = q.clone()
        real(q, k, v, kc, vc, pos, slots, cos_sin)
        return q0

    def ignores_q_out(q, k, v, kc, vc, pos, slots, cos_sin, fused=True, q_out=None):   # rotates q in place
        return real(q, k, v, kc, vc, pos, slots, cos_sin)

    for fake, expect in [(write_then_rotate, "k cache"), (writes_minus_one, "slots written differ"),
                         (q_not_rotated, "rotated q"), (ignores_q_out, "q_out")]:
        monkeypatch.setattr(ops, "rope_write_kv", fake)
        problem = selfcheck.rope_write_kv_problem(8, 2, 64, torch.bfloat16, torch.device("cpu"))
        assert problem is not None and expect in problem, (fake.__name__, problem)


def _fake_model(dtype: torch.dtype = torch.bfloat16):
    w, b = _router()
    return SimpleNamespace(layers=[SimpleNamespace(router_w=w.to(dtype), router_b=b.to(dtype))], n_heads=8, n_kv=2,
                           dtype=dtype, device=torch.device("cpu"),
                           cfg=SimpleNamespace(num_experts_per_tok=4, head_dim=64))


def test_check_fused_picks_unfused_with_a_warning_when_a_kernel_disagrees(monkeypatch, caplog):
    model = _fake_model()
    # the fused router is opt-in (measured slower on the H100); a correct rope kernel is on by default
    assert cuda_forward.check_fused(model) == ("unfused", "fused")
    assert cuda_forward.check_fused(model, router_wanted=True) == ("fused", "fused")
    monkeypatch.setattr(selfcheck, "router_topk_problem", lambda *a, **k: "T=1: chose an expert outside the top-k")
    with caplog.at_level(logging.WARNING, logger=cuda_forward.__name__):
        router, rope_kv = cuda_forward.check_fused(model, router_wanted=True)
    assert (router, rope_kv) == ("unfused", "fused")
    assert "fused router kernel disagrees" in caplog.text and "outside the top-k" in caplog.text
    backends = cuda_forward.Backends("fa3", "triton-mxfp4", True, router, rope_kv)
    assert "router+top-k=unfused, rope+kv-write=fused" in backends.describe()
    monkeypatch.setattr(selfcheck, "rope_write_kv_problem", lambda *a, **k: pytest.fail("no check when turned off"))
    assert cuda_forward.check_fused(model, enabled=False) == ("unfused", "unfused")


def test_check_fused_does_not_claim_fused_for_inputs_the_kernels_do_not_take(caplog):
    with caplog.at_level(logging.WARNING, logger=cuda_forward.__name__):
        assert cuda_forward.check_fused(_fake_model(torch.float32)) == ("unfused", "unfused")
    assert caplog.text.count("does not take these inputs") == 2


def test_fa3_step_plan_computes_once_per_attention_kind_and_gives_each_layer_its_counter():
    from mini_vllm.ops.attention_fa3 import StepPlan

    plan = StepPlan(num_layers=6, batch=3, device=torch.device("cpu"), max_kinds=2)
    assert torch.equal(plan.semaphores, torch.zeros(6, dtype=torch.int32))
    calls = [plan.args(i, 127 if i % 2 == 0 else -1, 0, 3) for i in range(6)]
    assert [mode for _, _, mode in calls] == [1, 1, 2, 2, 2, 2]             # sliding, full, then reuse
    assert {sched for sched, _, _ in calls[0::2]} == {plan.sched[0].data_ptr()}
    assert {sched for sched, _, _ in calls[1::2]} == {plan.sched[1].data_ptr()}
    assert [sem for _, sem, _ in calls] == [plan.semaphores[i].data_ptr() for i in range(6)]
    with pytest.raises(ValueError, match="batch 3, called with 4"):
        plan.args(0, 127, 0, 4)
    with pytest.raises(ValueError, match="holds 2 attention kinds"):
        plan.args(0, 127, 8, 3)                                             # forced splits: a third kind
