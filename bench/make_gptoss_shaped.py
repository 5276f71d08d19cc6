#!/usr/bin/env python3
"""Write a random checkpoint with gpt-oss-20b's exact shapes, in the published format, on the GPU machine.

Why: the real weights cannot reach the device machine (no internet), and speed depends only on shapes
and formats: 24 layers, hidden 2880, 64 q / 8 kv heads of 64, 32 experts (top-4) in MXFP4
(`*_blocks` uint8 [E, N, K/32, 16] + `*_scales` e8m0), bf16 attention/router/embedding/head, vocab
201,088. Random draws are made on the GPU (fast); files are sharded like the real checkpoint, with an
index. The tokenizer is the tiny model's byte-level BPE with the harmony specials (the real
o200k_harmony vocabulary is not available offline); lm_head rows past it are zero, so generated ids
always decode to text - the detokeniser does real work. `--layers N` writes a shallower model.

    python3 bench/make_gptoss_shaped.py OUT_DIR [--layers 24] [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

from mini_vllm.model.tiny import HARMONY_SPECIALS, build_tokenizer, model_config, write_tokenizer_files  # noqa: E402,E501

SHAPE_20B = dict(hidden_size=2880, intermediate_size=2880, num_hidden_layers=24, num_attention_heads=64,
                 num_key_value_heads=8, head_dim=64, num_local_experts=32, num_experts_per_tok=4,
                 vocab_size=201088, sliding_window=128, max_position_embeddings=131072,
                 original_max_position_embeddings=4096)


def layer_weights(i: int, g: torch.Generator, dev: str) -> dict[str, torch.Tensor]:
    s = SHAPE_20B
    h, inter, d, nq, nkv, ne = (s["hidden_size"], s["intermediate_size"], 64, 64, 8, 32)

    def randn(*shape: int, std: float, mean: float = 0.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, device=dev) * std + mean).to(torch.bfloat16).cpu()

    def mx(rows: tuple[int, ...], cols: int, exp: int) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = torch.randint(0, 256, (*rows, cols // 32, 16), generator=g, device=dev, dtype=torch.int32)
        scales = 127 + exp + torch.randint(-1, 2, (*rows, cols // 32), generator=g, device=dev, dtype=torch.int32)
        return blocks.to(torch.uint8).cpu(), scales.to(torch.uint8).cpu()

    p = f"model.layers.{i}."
    w = {p + "input_layernorm.weight": randn(h, std=0.05, mean=1.0),
         p + "post_attention_layernorm.weight": randn(h, std=0.05, mean=1.0),
         p + "self_attn.sinks": randn(nq, std=0.5),
         p + "self_attn.o_proj.weight": randn(h, nq * d, std=(nq * d) ** -0.5),
         p + "self_attn.o_proj.bias": randn(h, std=0.02),
         p + "mlp.router.weight": randn(ne, h, std=h ** -0.5),
         p + "mlp.router.bias": randn(ne, std=0.1)}
    for name, rows in (("q", nq * d), ("k", nkv * d), ("v", nkv * d)):
        w[p + f"self_attn.{name}_proj.weight"] = randn(rows, h, std=h ** -0.5)
        w[p + f"self_attn.{name}_proj.bias"] = randn(rows, std=0.02)
    e = p + "mlp.experts."
    w[e + "gate_up_proj_blocks"], w[e + "gate_up_proj_scales"] = mx((ne, 2 * inter), h, -7)
    w[e + "down_proj_blocks"], w[e + "down_proj_scales"] = mx((ne, h), inter, -7)
    w[e + "gate_up_proj_bias"] = randn(ne, 2 * inter, std=0.02)
    w[e + "down_proj_bias"] = randn(ne, h, std=0.02)
    return w


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    ids = {t: tok.token_to_id(t) for t in HARMONY_SPECIALS}
    g = torch.Generator(device=args.device).manual_seed(args.seed)
    s = SHAPE_20B
    shards: list[dict[str, torch.Tensor]] = []
    head = (torch.randn(s["vocab_size"], s["hidden_size"], generator=g, device=args.device)
            * s["hidden_size"] ** -0.5).to(torch.bfloat16)
    head[tok.get_vocab_size():] = 0
    shards.append({"model.embed_tokens.weight": (torch.randn(s["vocab_size"], s["hidden_size"], generator=g,
                                                             device=args.device)).to(torch.bfloat16).cpu(),
                   "lm_head.weight": head.cpu(),
                   "model.norm.weight": torch.ones(s["hidden_size"], dtype=torch.bfloat16)})
    per_shard = 6
    for i in range(args.layers):
        if i % per_shard == 0:
            shards.append({})
        shards[-1].update(layer_weights(i, g, args.device))
    weight_map, total = {}, 0
    for k, part in enumerate(shards):
        fname = f"model-{k:05d}-of-{len(shards) - 1:05d}.safetensors"
        save_file(part, str(out / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
        total += sum(t.numel() * t.element_size() for t in part.values())
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=1))
    shape = dict(s, num_hidden_layers=args.layers)
    (out / "config.json").write_text(json.dumps(model_config(shape, s["vocab_size"], ids), indent=2, sort_keys=True))
    write_tokenizer_files(out, tok, s["max_position_embeddings"])
    print(f"wrote {out}: {args.layers} layers, {total / 1e9:.2f} GB in {len(shards)} shards, "
          f"{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
