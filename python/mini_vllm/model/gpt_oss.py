"""GptOssForCausalLM for the paged engine: flattened tokens in, hidden states / logits out.

Tensor parallelism lives here as data, not as separate classes: a rank holds its slice of the
attention heads (q and kv heads split, o_proj row-parallel) and E/N whole experts; two all-reduces
per layer (after o_proj, after the MoE) restore the full hidden state. Embedding and lm_head are
replicated; only rank 0 computes logits. With tp_size=1 the all-reduce is the identity.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mini_vllm.model.attention import AttnMetadata, paged_attention, write_kv
from mini_vllm.model.config import GptOssConfig
from mini_vllm.model.layers import AllReduce, Experts, Rotary, moe, rms_norm
from mini_vllm.model.loader import CheckpointReader


@dataclass
class LayerWeights:
    ln1: torch.Tensor
    ln2: torch.Tensor
    qkv_w: torch.Tensor          # [(Hq_l + 2 KVH_l) * D, H]
    qkv_b: torch.Tensor
    o_w: torch.Tensor            # [H, Hq_l * D]
    o_b: torch.Tensor            # zeros on ranks > 0 (added once after the all-reduce sum)
    sinks: torch.Tensor          # [Hq_l]
    router_w: torch.Tensor
    router_b: torch.Tensor
    experts: Experts


class GptOssModel:
    def __init__(self, cfg: GptOssConfig, dtype: torch.dtype, device: torch.device, max_positions: int,
                 tp_rank: int = 0, tp_size: int = 1, all_reduce: AllReduce | None = None):
        for what, n in (("attention heads", cfg.num_attention_heads), ("kv heads", cfg.num_key_value_heads),
                        ("experts", cfg.num_local_experts)):
            if n % tp_size:
                raise ValueError(f"tensor parallel size {tp_size} does not divide the {n} {what}")
        self.cfg, self.dtype, self.device = cfg, dtype, device
        self.tp_rank, self.tp_size = tp_rank, tp_size
        self.all_reduce = all_reduce or (lambda t: t)
        self.n_heads = cfg.num_attention_heads // tp_size
        self.n_kv = cfg.num_key_value_heads // tp_size
        self.n_experts = cfg.num_local_experts // tp_size
        self.expert_offset = tp_rank * self.n_experts
        self.scale = cfg.head_dim ** -0.5
        self.rotary = Rotary(cfg, max_positions, dtype, device)
        self.layers: list[LayerWeights] = []

    # ---- loading -------------------------------------------------------------------------------
    def load(self, reader: CheckpointReader) -> "GptOssModel":
        cfg, d = self.cfg, self.cfg.head_dim
        r = self.tp_rank

        def t(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
            return x.to(device=self.device, dtype=dtype or self.dtype).contiguous()

        def rows(name: str, per: int) -> torch.Tensor:   # this rank's slice along dim 0 (head-major)
            return reader.get(name, 0, r * per, (r + 1) * per)

        self.embed = t(reader.get("model.embed_tokens.weight"))
        self.norm = t(reader.get("model.norm.weight"))
        self.lm_head = self.embed if cfg.tie_word_embeddings else t(reader.get("lm_head.weight"))
        qd, kvd = self.n_heads * d, self.n_kv * d
        self.layers = []
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            a = p + "self_attn."
            qkv_w = torch.cat([rows(a + "q_proj.weight", qd), rows(a + "k_proj.weight", kvd),
                               rows(a + "v_proj.weight", kvd)])
            qkv_b = torch.cat([rows(a + "q_proj.bias", qd), rows(a + "k_proj.bias", kvd),
                               rows(a + "v_proj.bias", kvd)])
            o_b = reader.get(a + "o_proj.bias")
            self.layers.append(LayerWeights(
                ln1=t(reader.get(p + "input_layernorm.weight"), torch.float32),
                ln2=t(reader.get(p + "post_attention_layernorm.weight"), torch.float32),
                qkv_w=t(qkv_w), qkv_b=t(qkv_b),
                o_w=t(reader.get(a + "o_proj.weight", 1, r * qd, (r + 1) * qd)),
                o_b=t(o_b if r == 0 else torch.zeros_like(o_b)),
                sinks=t(rows(a + "sinks", self.n_heads), torch.float32),
                router_w=t(reader.get(p + "mlp.router.weight")),
                router_b=t(reader.get(p + "mlp.router.bias")),
                experts=self._load_experts(reader, p + "mlp.experts."),
            ))
        return self

    def _load_experts(self, reader: CheckpointReader, p: str) -> Experts:
        e0, e1 = self.expert_offset, self.expert_offset + self.n_experts

        def get(name: str) -> torch.Tensor:
            return reader.get(p + name, 0, e0, e1).to(self.device)

        biases = (get("gate_up_proj_bias").to(self.dtype), get("down_proj_bias").to(self.dtype))
        if reader.has(p + "gate_up_proj_blocks"):
            packed = {"gate_up_blocks": get("gate_up_proj_blocks"), "gate_up_scales": get("gate_up_proj_scales"),
                      "down_blocks": get("down_proj_blocks"), "down_scales": get("down_proj_scales")}
            return Experts(*biases, dtype=self.dtype, packed=packed)
        # dequantised checkpoints (as transformers saves them): gate_up [E, H, 2I], down [E, I, H]
        dense = {"gate_up": get("gate_up_proj").to(self.dtype).transpose(1, 2).contiguous(),
                 "down": get("down_proj").to(self.dtype).transpose(1, 2).contiguous()}
        return Experts(*biases, dtype=self.dtype, dense=dense)

    # ---- forward -------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, meta: AttnMetadata, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]
                ) -> torch.Tensor:
        """input_ids [T] -> final-normed hidden states [T, H] (KV of these tokens written to the cache)."""
        cfg, d = self.cfg, self.cfg.head_dim
        h = F.embedding(input_ids, self.embed)
        qd, kvd = self.n_heads * d, self.n_kv * d
        for i, lw in enumerate(self.layers):
            x = rms_norm(h, lw.ln1, cfg.rms_norm_eps)
            qkv = F.linear(x, lw.qkv_w, lw.qkv_b)
            q = self.rotary(qkv[:, :qd].view(-1, self.n_heads, d), meta.positions)
            k = self.rotary(qkv[:, qd:qd + kvd].view(-1, self.n_kv, d), meta.positions)
            v = qkv[:, qd + kvd:].view(-1, self.n_kv, d)
            k_cache, v_cache = kv_caches[i]
            write_kv(k_cache, v_cache, k, v, meta.slot_mapping)
            attn = paged_attention(q, k_cache, v_cache, lw.sinks, meta, cfg.is_sliding(i), self.scale)
            h = h + self.all_reduce(F.linear(attn, lw.o_w, lw.o_b))
            x = rms_norm(h, lw.ln2, cfg.rms_norm_eps)
            h = h + self.all_reduce(moe(x, lw.router_w, lw.router_b, lw.experts, cfg.num_experts_per_tok,
                                        cfg.swiglu_limit, cfg.swiglu_alpha, self.expert_offset))
        return rms_norm(h, self.norm, cfg.rms_norm_eps)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.lm_head).float()

    def weight_bytes(self) -> int:
        dense = [self.embed, self.norm] + ([] if self.lm_head is self.embed else [self.lm_head])
        total = sum(x.numel() * x.element_size() for x in dense)
        for lw in self.layers:
            total += sum(x.numel() * x.element_size() for x in
                         (lw.ln1, lw.ln2, lw.qkv_w, lw.qkv_b, lw.o_w, lw.o_b, lw.sinks, lw.router_w, lw.router_b))
            total += lw.experts.nbytes()
        return total
