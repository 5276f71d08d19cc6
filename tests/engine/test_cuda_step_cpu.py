"""The GPU step path (varlen metadata, fused-op forward, Triton MoE + paged attention), run on the CPU.

On an H100 this path uses FA3 and our CUDA kernels; here every op falls back to its torch reference
and the Triton kernels run in Triton's interpreter (fp32: the interpreter's bf16 dot is broken). What
this checks is the plumbing the GPU shares: token order, cu_seqlens / seqused_k / block tables built
from the engine's groups, RoPE / KV-write / fused add+norm wiring, packed MoE weights, sampling rows -
against the plain CPU model, token for token.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from mini_vllm.engine.cuda_step import CudaStep
from mini_vllm.model.cuda_forward import CudaForward, select_backends
from mini_vllm.sampling_params import SamplingParams

triton = pytest.importorskip("triton")


def _with_cuda_step(engine, **backend_overrides) -> None:
    r = engine.runner
    backends = dataclasses.replace(select_backends(r.model), **backend_overrides)
    assert backends.attention == "triton" and backends.moe == "triton-mxfp4"
    r.cuda_step = CudaStep(CudaForward(r.model, backends), r.kv_caches, r.model.lm_head,
                           engine.model_config.max_model_len, r.block_size, engine.args.max_num_seqs,
                           use_graphs=False)


def test_gpu_step_path_matches_cpu_model_greedy(make_engine, texts):
    from mini_vllm.ops.triton.interpret import interpreted

    # small chunked-prefill budget: steps mix decodes with prefill chunks of other prompts
    ref = make_engine(max_num_batched_tokens=24, enable_prefix_caching=False)
    gpu = make_engine(max_num_batched_tokens=24, enable_prefix_caching=False)
    _with_cuda_step(gpu)
    prompts = [ref.tokenizer.encode(t) for t in texts[:3]]
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    want = [o.outputs[0].token_ids for o in ref.generate(prompts, params)]
    with interpreted():
        got = [o.outputs[0].token_ids for o in gpu.generate(prompts, params)]
    assert got == want


# the GEMV kernels' wiring: on the CPU they fall back (F.linear, the Triton MoE's per-slot rows, torch sum +
# add + norm), so this runs the forward's fused-MoE-sum path, which the GPU takes at every batch size
@pytest.mark.parametrize("overrides", [{}, {"moe_gemv": "ours", "moe_sum_norm": "fused"}],
                         ids=["unfused", "gemv-and-fused-sum"])
def test_gpu_step_path_logits_match(make_engine, overrides):
    from mini_vllm.engine.model_runner import build_step_inputs
    from mini_vllm.ops.triton.interpret import interpreted

    eng = make_engine(enable_prefix_caching=False)
    prompt = eng.tokenizer.encode("Attention reads keys and values from a paged cache, block by block.")
    eng.add_request("r", prompt, SamplingParams(temperature=0.0, max_tokens=1))
    batch = eng.scheduler.schedule()
    inp = build_step_inputs(batch, eng.args.block_size)
    want = eng.runner.execute(inp)
    _with_cuda_step(eng, **overrides)
    before = eng.runner.kv.clone()
    with interpreted():
        eng.runner.cuda_step.warm_up(32)          # start-up warm-up: must not touch the KV cache
        assert torch.equal(eng.runner.kv, before)
        got = eng.runner.execute(inp)
    assert got.shape == want.shape
    rel = (got - want).norm() / want.norm()
    assert rel < 1e-4, rel
    assert torch.equal(got.argmax(-1), want.argmax(-1))


@pytest.mark.parametrize("rank", [0, 1])
def test_gpu_moe_of_one_tp_rank_matches_the_reference_shard(tiny_dir, rank):
    """Under TP each rank holds half the experts; the Triton path must sum exactly this rank's share."""
    from mini_vllm.model.config import GptOssConfig
    from mini_vllm.model.gpt_oss import GptOssModel
    from mini_vllm.model.layers import moe as moe_reference
    from mini_vllm.model.loader import CheckpointReader
    from mini_vllm.ops.triton.interpret import interpreted

    cfg = GptOssConfig.from_pretrained(tiny_dir)
    reader = CheckpointReader(str(tiny_dir))
    model = GptOssModel(cfg, torch.float32, torch.device("cpu"), 64, tp_rank=rank, tp_size=2).load(reader)
    reader.close()
    fwd = CudaForward(model, select_backends(model))
    x = torch.randn(7, cfg.hidden_size, generator=torch.Generator().manual_seed(rank))
    lw = model.layers[0]
    want = moe_reference(x, lw.router_w, lw.router_b, lw.experts, cfg.num_experts_per_tok, cfg.swiglu_limit,
                         cfg.swiglu_alpha, model.expert_offset)
    with interpreted():
        got = fwd._moe(0, x)
    assert want.abs().sum() > 0
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), (got - want).abs().max()


class _EagerGraph:
    """Stands in for a captured CUDA graph on the CPU: replay() reruns the captured body in place."""

    def __init__(self, run, buf):
        self.run, self.buf = run, buf

    def replay(self) -> None:
        self.buf["logits"].copy_(self.run())


def test_decode_graph_replay_path_matches_cpu_model(make_engine, texts):
    """Decode steps go through the graph path: static buffers, padding to a bucket, replay."""
    from mini_vllm.ops.triton.interpret import interpreted

    ref = make_engine(enable_prefix_caching=False)
    gpu = make_engine(enable_prefix_caching=False)
    _with_cuda_step(gpu)
    step = gpu.runner.cuda_step
    prompts = [ref.tokenizer.encode(t) for t in texts[:3]]
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in (2, 3, 4)]
    want = [o.outputs[0].token_ids for o in ref.generate(prompts, params)]
    replays = []
    with interpreted():
        for b in (1, 2, 4):                 # 3 decodes pad into bucket 4, then 2, then 1
            buf = step._static_buffers(b)
            run = step._graph_body(buf)
            buf["logits"] = run()
            graph = _EagerGraph(run, buf)
            graph.replay = (lambda g=graph, b=b: (replays.append(b), _EagerGraph.replay(g)))
            step.graphs[b] = (graph, buf)
        got = [o.outputs[0].token_ids for o in gpu.generate(prompts, params)]
    assert got == want
    assert {4, 2, 1} <= set(replays)
