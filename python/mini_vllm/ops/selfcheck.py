"""Start-up self-checks of the fused kernels against their unfused paths, on this GPU, before use.

Why: the fused kernels (router GEMM + top-k in one launch; RoPE + paged KV write in one launch) are
compiled on a machine without a GPU and first run on the H100. A wrong result there would silently
corrupt every generated token, so `CudaForward`'s backend selection runs each fused op once on small
random inputs against the two-op path it replaces; a disagreement beyond bf16 tolerance, or an
exception, is reported as a string (None = agrees) and the caller keeps the unfused path.
The comparisons live here, once, and bench/device_check_kernels.py uses the same ones.

Routing is compared tie-tolerantly: bf16 logits from two GEMMs with different summation orders may
differ by an ulp, which can swap two near-equal experts. A choice is accepted when every chosen expert's
reference logit is within 2 bf16 ulps (of the row's largest |logit|) of the k-th largest, the ids are
distinct and in range, and the weights equal the softmax of the reference logits at those ids.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mini_vllm import ops
from mini_vllm.ops.rope import YarnConfig, cos_sin_cache

TOL = 1e-2                  # relative L2 error allowed for bf16 results
_BF16_ULP = 2.0 ** -8


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in fp32; inf when a has a NaN/inf."""
    a, b = a.float(), b.float()
    if not torch.isfinite(a).all():
        return math.inf
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def routing_problem(ids: torch.Tensor, weights: torch.Tensor, ref_logits: torch.Tensor, top_k: int) -> str | None:
    """None if (ids, weights) is a valid top-k routing of ref_logits [T, E] (see module doc), else why not."""
    logits = ref_logits.float()
    ids = ids.long()
    if ids.shape != (logits.shape[0], top_k) or weights.shape != ids.shape:
        return f"shapes ids {tuple(ids.shape)} weights {tuple(weights.shape)}, want ({logits.shape[0]}, {top_k})"
    if bool(((ids < 0) | (ids >= logits.shape[1])).any()):
        return "expert id out of range"
    if top_k > 1 and bool((ids.sort(-1).values.diff(dim=-1) == 0).any()):
        return "an expert chosen twice for one token"
    chosen = logits.gather(1, ids)
    kth = logits.topk(top_k, dim=-1).values[:, -1:]
    atol = 2 * _BF16_ULP * logits.abs().amax(-1, keepdim=True) + 1e-6
    if bool((chosen < kth - atol).any()):
        return "chose an expert outside the top-k"
    err = rel_l2(weights, torch.softmax(chosen, dim=-1))
    return None if err <= TOL else f"weights differ from the softmax of the chosen logits (rel err {err:.2e})"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)   # an asynchronous kernel fault surfaces here, inside the check


def router_topk_problem(weight: torch.Tensor, bias: torch.Tensor | None, top_k: int,
                        tokens: tuple[int, ...] = (1, 13), seed: int = 0) -> str | None:
    """Fused `ops.router_topk` on random x vs F.linear + the tie-tolerant comparison; None = agrees."""
    gen = torch.Generator(device=weight.device).manual_seed(seed)
    # x scaled so that the logits (before bias) are ~N(0, 1): no single expert dominates the softmax,
    # so weights from a wrong normalisation (e.g. over all experts) stand out
    scale = 1.0 / float(weight.float().norm(dim=1).mean().clamp_min(1e-6))
    for t in tokens:
        x = (torch.randn(t, weight.shape[1], generator=gen, device=weight.device) * scale).to(weight.dtype)
        if not ops.router_fused_ok(x, weight, bias, top_k):   # else "fused" would silently mean the two ops
            return f"the fused kernel does not take these inputs (router {weight.dtype} {tuple(weight.shape)})"
        try:
            ids, w = ops.router_topk(x, weight, bias, top_k, fused=True)
            ref = F.linear(x, weight, bias)
            _sync(weight.device)
        except Exception as exc:  # noqa: BLE001 - any failure means: do not use the fused kernel
            return f"T={t}: {type(exc).__name__}: {exc}"
        problem = routing_problem(ids, w, ref, top_k)
        if problem:
            return f"T={t}: {problem}"
    return None


def rope_write_kv_problem(num_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                          device: torch.device, tokens: tuple[int, ...] = (1, 13), block_size: int = 16,
                          seed: int = 0) -> str | None:
    """Fused `ops.rope_write_kv` (q rotated in place, and into q_out) vs apply_rope + write_kv_cache.

    Inputs are views of one random qkv buffer. Slots are a random subset of 8 blocks, every third token
    from the second on at -1 (skipped); the caches start as NaN, so a write to a wrong slot, a missed
    write or a skipped token's write shows up.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    qd, kvd = num_heads * head_dim, num_kv_heads * head_dim
    max_pos = 256
    cos_sin = cos_sin_cache(max_pos, YarnConfig(head_dim=head_dim), device=device)

    def run(qkv, positions, slots, mode: str):
        t = qkv.shape[0]
        buf = qkv.clone()
        kc = torch.full((8, block_size, num_kv_heads, head_dim), float("nan"), dtype=dtype, device=device)
        vc = kc.clone()
        q, k, v = (buf[:, :qd].view(t, num_heads, head_dim), buf[:, qd:qd + kvd].view(t, num_kv_heads, head_dim),
                   buf[:, qd + kvd:].view(t, num_kv_heads, head_dim))
        if mode == "unfused":
            q_rot, _ = ops.apply_rope(q, k, positions, cos_sin)
            ops.write_kv_cache(k, v, kc, vc, slots)
        else:
            q_out = torch.full(q.shape, float("nan"), dtype=dtype, device=device) if mode == "q_out" else None
            if not ops.rope_write_kv_fused_ok(q, k, v, kc, vc, cos_sin, q_out):
                raise ValueError(f"the fused kernel does not take these inputs ({dtype}, {num_heads}/{num_kv_heads} "
                                 f"heads of {head_dim})")
            q_rot = ops.rope_write_kv(q, k, v, kc, vc, positions, slots, cos_sin, fused=True, q_out=q_out)
        _sync(device)
        return q_rot, buf, kc, vc

    for t in tokens:
        qkv = torch.randn(t, qd + 2 * kvd, generator=gen, device=device).to(dtype)
        positions = torch.randint(0, max_pos, (t,), generator=gen, device=device)
        slots = torch.randperm(8 * block_size, generator=gen, device=device)[:t]
        slots[1::3] = -1
        rq, rbuf, rkc, rvc = run(qkv, positions, slots, "unfused")
        written = ~rkc.isnan()
        for mode in ("in place", "q_out"):
            try:
                q_rot, buf, kc, vc = run(qkv, positions, slots, mode)
            except Exception as exc:  # noqa: BLE001 - any failure means: do not use the fused kernel
                return f"T={t} ({mode}): {type(exc).__name__}: {exc}"
            if not (torch.equal(kc.isnan(), rkc.isnan()) and torch.equal(vc.isnan(), rvc.isnan())):
                return f"T={t} ({mode}): cache slots written differ (wrong slot, missed write, or a -1 slot written)"
            if mode == "q_out" and not torch.equal(buf[:, :qd], qkv[:, :qd]):
                return f"T={t} ({mode}): q was modified although q_out was given"
            errs = {"rotated q": rel_l2(q_rot, rq), "k/v": rel_l2(buf[:, qd:], rbuf[:, qd:]),
                    "k cache": rel_l2(kc[written], rkc[written]) if written.any() else 0.0,
                    "v cache": rel_l2(vc[written], rvc[written]) if written.any() else 0.0}
            bad = {name: e for name, e in errs.items() if e > TOL}
            if bad:
                return f"T={t} ({mode}): " + ", ".join(f"{name} rel err {e:.2e}" for name, e in bad.items())
    return None


def fa3_plan_problem(num_heads: int, num_kv_heads: int, device: torch.device, page_size: int = 16,
                     seed: int = 0) -> str | None:
    """FA3 with scheduler metadata shared across layers (attention_fa3.StepPlan) vs FA3 per call.

    Four "layers" alternate a 128-key window and full attention over one random paged batch (decode rows
    and a short prefill, uneven lengths), as GPT-OSS does; each output must match the plain call.
    """
    from mini_vllm.ops import attention_fa3

    gen = torch.Generator(device=device).manual_seed(seed)
    lens_q, lens_k = [1, 1, 1, 5], [700, 40, 1500, 5]
    pages = [(n + page_size - 1) // page_size for n in lens_k]
    num_pages = sum(pages) + 4
    d = attention_fa3.build_limits().head_dim

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, device=device).to(torch.bfloat16)

    q, kc, vc, sinks = rnd(sum(lens_q), num_heads, d), rnd(num_pages, page_size, num_kv_heads, d), \
        rnd(num_pages, page_size, num_kv_heads, d), rnd(num_heads)
    perm = torch.randperm(num_pages, generator=gen, device=device).to(torch.int32)
    table = torch.zeros(len(lens_k), max(pages), dtype=torch.int32, device=device)
    used = 0
    for i, n in enumerate(pages):
        table[i, :n] = perm[used:used + n]
        used += n
    cu = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], dtype=torch.int32, device=device)
    seqused = torch.tensor(lens_k, dtype=torch.int32, device=device)
    try:
        plan = attention_fa3.StepPlan(4, len(lens_k), device)
        for layer, window in enumerate((128, None, 128, None)):
            kw = dict(causal=True, sliding_window=window, sinks=sinks, softmax_scale=0.125)
            want = attention_fa3.fa3_attention(q, kc, vc, table, cu, seqused, max(lens_q), max(lens_k), **kw)
            got = attention_fa3.fa3_attention(q, kc, vc, table, cu, seqused, max(lens_q), max(lens_k), plan=plan,
                                              layer=layer, **kw)
            _sync(device)
            err = rel_l2(got, want)
            if err > 1e-3:
                return f"layer {layer} (window {window}): rel err {err:.2e} against the per-call scheduler"
    except Exception as exc:  # noqa: BLE001 - any failure means: keep FA3's per-call scheduler
        return f"{type(exc).__name__}: {exc}"
    return None


def _random_routing(t: int, k: int, num_experts: int, gen: torch.Generator, device: torch.device):
    """Distinct experts per token (some shared across tokens), softmax weights."""
    ids = torch.stack([torch.randperm(num_experts, generator=gen, device=device)[:k] for _ in range(t)])
    weights = torch.softmax(torch.randn(t, k, generator=gen, device=device), -1)
    return ids.to(torch.int32).contiguous(), weights


def moe_gemv_problem(w, top_k: int, seed: int = 0) -> str | None:
    """`gemv.moe_gemv_slots` on a layer's real MXFP4 weights vs the torch MoE reference (dequantise, two
    fp32 matmuls per expert), T = 1..8, experts shared across tokens; then the fused sum + add + RMSNorm
    vs its torch path."""
    from mini_vllm.ops import gemv
    from mini_vllm.ops.triton.reference import fused_moe_reference

    device = w.gate_up_blocks.device
    gen = torch.Generator(device=device).manual_seed(seed)
    h = w.hidden_size
    for t in (1, 2, 5, 8):
        x = torch.randn(t, h, generator=gen, device=device).to(torch.bfloat16)
        ids, weights = _random_routing(t, top_k, w.num_experts, gen, device)
        if t > 1:
            ids[1] = ids[0]                    # two tokens on the same experts
        if not gemv.moe_gemv_ok(x, ids, w):
            return f"the MoE GEMV kernels do not take T={t} (H={h}, E={w.num_experts}, k={top_k})"
        try:
            rows = gemv.moe_gemv_slots(x, ids, weights, w)
            ref = fused_moe_reference(x.float(), ids, weights, w, compute_dtype=torch.float32)
            _sync(device)
        except Exception as exc:  # noqa: BLE001
            return f"T={t}: {type(exc).__name__}: {exc}"
        if rows is None:
            return "the MoE GEMV kernels are not available here"
        err = rel_l2(rows.view(t, top_k, h).sum(1), ref)
        if err > TOL:
            return f"T={t}: rel err {err:.2e} against the torch MoE reference"
        res, norm_w = torch.randn(t, h, generator=gen, device=device).to(torch.bfloat16), \
            (1 + 0.1 * torch.randn(h, generator=gen, device=device)).to(torch.bfloat16)
        r1, r2 = res.clone(), res.clone()
        y, _ = gemv.moe_sum_add_rms_norm(rows, top_k, r1, norm_w)
        y_ref = rows.view(t, top_k, h).sum(1).to(torch.bfloat16)
        ops.reference.fused_add_rms_norm(y_ref, r2, norm_w)
        _sync(device)
        errs = (rel_l2(y, y_ref), rel_l2(r1, r2))
        if max(errs) > TOL:
            return f"T={t}: sum + add + RMSNorm rel err {errs[0]:.2e} (x) {errs[1]:.2e} (residual)"
    return None

