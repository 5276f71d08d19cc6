"""Our GPT-OSS forward against transformers' GptOssForCausalLM, on the same tiny checkpoint files."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from gptoss_reference import hf_logits

from mini_vllm.model import mxfp4
from mini_vllm.model.attention import AttnMetadata, build_group
from mini_vllm.model.config import GptOssConfig
from mini_vllm.model.gpt_oss import GptOssModel
from mini_vllm.model.layers import rope_inv_freq
from mini_vllm.model.loader import CheckpointReader
from mini_vllm.model.tiny import write_tiny_checkpoint

DATA = Path(__file__).parent / "data"
BS = 16


def load(model_dir: Path, tp_rank: int = 0, tp_size: int = 1) -> GptOssModel:
    cfg = GptOssConfig.from_pretrained(model_dir)
    return GptOssModel(cfg, torch.float32, torch.device("cpu"), 512, tp_rank, tp_size).load(CheckpointReader(model_dir))


def kv_cache(model: GptOssModel, blocks: int = 16):
    return [(torch.zeros(blocks, BS, model.n_kv, 64), torch.zeros(blocks, BS, model.n_kv, 64))
            for _ in model.layers]


def prefill_logits(model: GptOssModel, ids: list[int], table: list[int]) -> torch.Tensor:
    t = len(ids)
    pos = torch.arange(t)
    slots = torch.tensor([table[p // BS] * BS + p % BS for p in range(t)])
    meta = AttnMetadata(pos, slots, [build_group(0, pos.view(1, t), [t], [table], BS, model.cfg.sliding_window)])
    return model.compute_logits(model.forward(torch.tensor(ids), meta, kv_cache(model)))


def test_real_configs_parse_and_yarn_matches_transformers():
    from transformers import GptOssConfig as HFConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for name, layers, experts in (("gpt-oss-20b", 24, 32), ("gpt-oss-120b", 36, 128)):
        raw = json.loads((DATA / f"{name}.config.json").read_text())
        cfg = GptOssConfig.from_dict(raw)
        assert (cfg.num_hidden_layers, cfg.num_local_experts, cfg.num_experts_per_tok) == (layers, experts, 4)
        assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (64, 8, 64)
        assert cfg.is_sliding(0) and not cfg.is_sliding(1) and cfg.sliding_window == 128
        assert cfg.quant_method == "mxfp4" and cfg.vocab_size == 201088
        ours, scale = rope_inv_freq(cfg)
        ref, ref_scale = ROPE_INIT_FUNCTIONS["yarn"](HFConfig(**raw), "cpu")
        torch.testing.assert_close(ours, ref, rtol=0, atol=0)
        assert abs(scale - ref_scale) < 1e-12


def test_mxfp4_dequantize_matches_transformers(tiny_dir):
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    r = CheckpointReader(tiny_dir)
    blocks = r.get("model.layers.0.mlp.experts.gate_up_proj_blocks")
    scales = r.get("model.layers.0.mlp.experts.gate_up_proj_scales")
    ref = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)      # [E, H, 2I] (x @ W)
    ours = mxfp4.dequantize(blocks, scales)                                   # [E, 2I, H] (F.linear)
    torch.testing.assert_close(ours.transpose(1, 2), ref, rtol=0, atol=0)
    assert ours.abs().max() > 0 and ours.std() > 0.01


def test_prefill_logits_match_transformers(tiny_dir, hf_model, prompts):
    model = load(tiny_dir)
    for ids in prompts:
        table = [7, 2, 11, 4, 9][: -(-len(ids) // BS)]        # scattered, non-contiguous blocks
        ours = prefill_logits(model, ids, table)
        ref = hf_logits(hf_model, ids)
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_decode_path_logits_match_transformers(tiny_dir, hf_model, prompts):
    """Two sequences fed one token per step through the batched decode group (sliding window crossed)."""
    model = load(tiny_dir)
    seqs = [prompts[2], prompts[3]]
    tables = [[3, 8, 1, 12], [5, 0, 14, 6]]
    kv = kv_cache(model)
    got: list[list[torch.Tensor]] = [[], []]
    for step in range(max(map(len, seqs))):
        live = [i for i, s in enumerate(seqs) if step < len(s)]
        ids = torch.tensor([seqs[i][step] for i in live])
        pos = torch.full((len(live),), step)
        slots = torch.tensor([tables[i][step // BS] * BS + step % BS for i in live])
        grp = build_group(0, pos.view(-1, 1), [step + 1] * len(live), [tables[i] for i in live], BS,
                          model.cfg.sliding_window)
        logits = model.compute_logits(model.forward(ids, AttnMetadata(pos, slots, [grp]), kv))
        for j, i in enumerate(live):
            got[i].append(logits[j])
    for i, s in enumerate(seqs):
        torch.testing.assert_close(torch.stack(got[i]), hf_logits(hf_model, s), rtol=1e-4, atol=1e-4)


def test_sharded_and_bf16_expert_checkpoints_give_the_same_logits(tiny_dir, tmp_path, prompts):
    sharded = write_tiny_checkpoint(tmp_path / "sharded", shards=3)
    dense = write_tiny_checkpoint(tmp_path / "dense", experts="bf16")
    assert (sharded / "model.safetensors.index.json").is_file() and len(list(sharded.glob("*.safetensors"))) == 3
    assert "quantization_config" not in json.loads((dense / "config.json").read_text())
    ids, table = prompts[3], [1, 2, 3, 4]
    base = prefill_logits(load(tiny_dir), ids, table)
    torch.testing.assert_close(prefill_logits(load(sharded), ids, table), base, rtol=0, atol=0)
    torch.testing.assert_close(prefill_logits(load(dense), ids, table), base, rtol=1e-5, atol=1e-5)


def test_tensor_parallel_shards_sum_to_the_full_model(tiny_dir, prompts):
    """Both TP=2 shards, all-reduced by hand (a sum), equal the unsharded model (the gloo run is in tests/engine)."""
    ids, table = prompts[2], [4, 1, 6]
    full = prefill_logits(load(tiny_dir), ids, table)
    shards = [load(tiny_dir, r, 2) for r in range(2)]
    assert all(s.n_heads == 2 and s.n_kv == 1 and s.n_experts == 4 for s in shards)
    # run the two ranks in lock step: every all-reduce sums the partial results of both
    import threading
    barrier = threading.Barrier(2)
    partial: list[torch.Tensor | None] = [None, None]
    results: list[torch.Tensor | None] = [None, None]

    def make_all_reduce(rank: int):
        def all_reduce(t: torch.Tensor) -> torch.Tensor:
            partial[rank] = t
            barrier.wait()
            total = partial[0] + partial[1]
            barrier.wait()
            return total
        return all_reduce

    def run(rank: int) -> None:
        shards[rank].all_reduce = make_all_reduce(rank)
        results[rank] = prefill_logits(shards[rank], ids, table)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    # fp32 partial sums reassociate the reductions: a few ulps of the logits' scale (seen 1.3e-5 on an
    # AVX-512 CPU), far below what a wrong shard (head, expert or bias split) would give (>1e-2).
    torch.testing.assert_close(results[0], full, rtol=1e-4, atol=5e-5)
