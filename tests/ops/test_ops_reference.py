"""Our torch references (the CPU runtime's ops and the kernels' oracle) against transformers' GptOss code.

transformers is the model we must match; where it computes in the input dtype we compare in fp32, where
both sides are exact or differ by float rounding only.
"""
from __future__ import annotations

import pytest
import torch

from mini_vllm import ops
from mini_vllm.ops import reference as R
from mini_vllm.ops.rope import YarnConfig, cos_sin_cache, yarn_inv_freq

gpt_oss = pytest.importorskip("transformers.models.gpt_oss.modeling_gpt_oss")
from transformers import GptOssConfig  # noqa: E402
from transformers.integrations.mxfp4 import convert_moe_packed_tensors  # noqa: E402


def _config(**kw) -> GptOssConfig:
    base = dict(hidden_size=256, head_dim=64, num_attention_heads=8, num_key_value_heads=2, num_local_experts=32,
                num_experts_per_tok=4, intermediate_size=128, max_position_embeddings=131072, rope_theta=150000.0)
    base.update(kw)
    return GptOssConfig(**base)


def test_yarn_matches_transformers_rotary_embedding():
    cfg = _config()
    rot = gpt_oss.GptOssRotaryEmbedding(cfg)
    ours = YarnConfig.from_hf(cfg.to_dict())
    assert ours == YarnConfig()  # the published GPT-OSS values are our defaults
    inv, factor = yarn_inv_freq(ours)
    torch.testing.assert_close(inv, rot.inv_freq, rtol=0, atol=0)
    assert factor == pytest.approx(rot.attention_scaling)
    positions = torch.tensor([[0, 1, 7, 4095, 4096, 65000, 131071]])
    cos, sin = rot(torch.zeros(1, dtype=torch.float32), positions)
    cache = cos_sin_cache(131072, ours)
    torch.testing.assert_close(cache[positions[0], :32], cos[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(cache[positions[0], 32:], sin[0], rtol=1e-6, atol=1e-6)


def test_yarn_truncate_flag_changes_frequencies():
    a, _ = yarn_inv_freq(YarnConfig(truncate=False))
    b, _ = yarn_inv_freq(YarnConfig(truncate=True))
    assert not torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_apply_rope_matches_transformers(dtype):
    torch.manual_seed(0)
    cfg = _config()
    rot = gpt_oss.GptOssRotaryEmbedding(cfg)
    t, hq, hk = 9, 8, 2
    positions = torch.tensor([0, 3, 5, 100, 4097, 9000, 20000, 70000, 131000])
    qkv = torch.randn(t, (hq + 2 * hk) * 64, dtype=dtype)
    q = qkv[:, : hq * 64].view(t, hq, 64)                    # strided views, as the model makes them
    k = qkv[:, hq * 64:(hq + hk) * 64].view(t, hk, 64)
    q_in, k_in = q.clone(), k.clone()
    cos, sin = rot(torch.zeros(1, dtype=torch.float32), positions[None])
    ref_q = gpt_oss._apply_rotary_emb(q_in.float(), cos[0][:, None], sin[0][:, None])
    ref_k = gpt_oss._apply_rotary_emb(k_in.float(), cos[0][:, None], sin[0][:, None])
    ops.apply_rope(q, k, positions, cos_sin_cache(131072))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1.6e-2, atol=1e-2)
    torch.testing.assert_close(q.float(), ref_q, **tol)
    torch.testing.assert_close(k.float(), ref_k, **tol)
    v_before = qkv[:, (hq + hk) * 64:].clone()
    ops.apply_rope(q, k, positions, cos_sin_cache(131072))       # rotating again must leave v alone
    assert torch.equal(qkv[:, (hq + hk) * 64:], v_before)


def test_rms_norm_matches_transformers():
    torch.manual_seed(1)
    norm = gpt_oss.GptOssRMSNorm(2880, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(2880))
    x = torch.randn(5, 2880, dtype=torch.bfloat16) * 3
    ref = norm.to(torch.bfloat16)(x)
    ours = ops.rms_norm(x, norm.weight.data.to(torch.bfloat16), eps=1e-5)
    torch.testing.assert_close(ours.float(), ref.float(), rtol=1.6e-2, atol=1e-2)
    xf, wf = x.float(), norm.weight.data.float()
    with torch.no_grad():
        ref32 = norm.float()(xf)
    torch.testing.assert_close(ops.rms_norm(xf, wf), ref32, rtol=1e-6, atol=1e-6)


def test_fused_add_rms_norm_is_add_then_norm_in_place():
    torch.manual_seed(2)
    x = torch.randn(4, 256, dtype=torch.bfloat16)
    res = torch.randn(4, 256, dtype=torch.bfloat16)
    w = torch.randn(256, dtype=torch.bfloat16)
    expect_res = x + res                                   # the bf16 model's residual add
    expect_x = R.rms_norm(expect_res, w)
    out_x, out_res = ops.fused_add_rms_norm(x, res, w)
    assert out_x.data_ptr() == x.data_ptr() and out_res.data_ptr() == res.data_ptr()
    assert torch.equal(res, expect_res) and torch.equal(x, expect_x)


def test_swiglu_matches_transformers_experts_gate():
    torch.manual_seed(3)
    experts = gpt_oss.GptOssExperts(_config())
    gate_up = torch.randn(7, 256) * 6                      # reaches both clamps
    torch.testing.assert_close(ops.swiglu_clamped(gate_up), experts._apply_gate(gate_up), rtol=1e-6, atol=1e-6)
    bf = gate_up.to(torch.bfloat16)
    torch.testing.assert_close(ops.swiglu_clamped(bf).float(), experts._apply_gate(bf.float()), rtol=8e-3, atol=1e-2)


def test_mxfp4_dequant_matches_transformers():
    torch.manual_seed(4)
    e, rows, g = 3, 10, 4
    blocks = torch.randint(0, 256, (e, rows, g, 16), dtype=torch.uint8)
    scales = torch.randint(110, 140, (e, rows, g), dtype=torch.uint8)
    ref = convert_moe_packed_tensors(blocks, scales, dtype=torch.bfloat16)      # [e, g*32, rows]
    ours = ops.dequant_mxfp4(blocks, scales)                                     # [e, rows, g*32]
    assert ours.shape == (e, rows, g * 32) and ours.dtype == torch.bfloat16
    assert torch.equal(ours, ref.transpose(1, 2))
    # the layout facts, by hand: byte 0x9A of group 0 = low nibble 0xA (-1.0) then high 0x9 (-0.5), scale 2^1
    b = torch.zeros(1, 16, dtype=torch.uint8)
    b[0, 0] = 0x9A
    out = ops.dequant_mxfp4(b, torch.tensor([128], dtype=torch.uint8))
    assert out.shape == (32,) and out[:3].tolist() == [-2.0, -1.0, 0.0]


def test_mxfp4_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="do not match"):
        ops.dequant_mxfp4(torch.zeros(2, 3, 16, dtype=torch.uint8), torch.zeros(2, 4, dtype=torch.uint8))


def test_route_topk_matches_transformers_router():
    torch.manual_seed(5)
    router = gpt_oss.GptOssTopKRouter(_config())
    with torch.no_grad():
        router.weight.normal_()
        router.bias.normal_()
    h = torch.randn(11, 256)
    logits, scores, indices = router(h)
    idx, w = ops.route_topk(logits, 4)
    assert idx.dtype == torch.int32 and w.dtype == torch.float32
    assert torch.equal(idx.long(), indices)
    torch.testing.assert_close(w, scores, rtol=1e-6, atol=1e-6)


def test_write_kv_cache_places_slots_and_skips_minus_one():
    torch.manual_seed(6)
    num_blocks, block, hk, d = 4, 16, 2, 64
    kc = torch.zeros(num_blocks, block, hk, d)
    vc = torch.zeros_like(kc)
    key, value = torch.randn(3, hk, d), torch.randn(3, hk, d)
    ops.write_kv_cache(key, value, kc, vc, torch.tensor([17, -1, 63]))
    assert torch.equal(kc[1, 1], key[0]) and torch.equal(vc[3, 15], value[2])
    assert int((kc != 0).any(-1).any(-1).sum()) == 2       # token 1 (slot -1) written nowhere
