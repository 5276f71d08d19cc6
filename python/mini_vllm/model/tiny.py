"""A deterministic random tiny GPT-OSS checkpoint in exactly the published format.

It is the embedded default model: tests, the README's main command and local rollouts use it, so it
must look like openai/gpt-oss-20b to every consumer (config.json with mxfp4 quantization_config and
YaRN, MXFP4 experts in safetensors, a byte-level BPE tokenizer with the harmony special tokens by
their real names, generation_config.json with the harmony stop ids) while being small enough to run
on 2 CPU cores. Same seed -> same bytes; writing takes well under a second.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from mini_vllm.model import mxfp4

# o200k_harmony's special tokens in their real order (ids 199998..200012 there; here after the BPE vocab).
HARMONY_SPECIALS = [
    "<|startoftext|>", "<|endoftext|>", "<|reserved_200000|>", "<|reserved_200001|>", "<|return|>",
    "<|constrain|>", "<|reserved_200004|>", "<|channel|>", "<|start|>", "<|end|>", "<|message|>",
    "<|reserved_200009|>", "<|reserved_200010|>", "<|reserved_200011|>", "<|call|>",
]

TINY_SHAPE = dict(
    hidden_size=128, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=64, num_local_experts=8, num_experts_per_tok=4,
    sliding_window=16, max_position_embeddings=4096, original_max_position_embeddings=128,
)
BPE_VOCAB = 960

_CORPUS = """\
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
Once upon a time, in a small village by the sea, there lived an old fisherman and his clever daughter.
Every morning they rowed out past the lighthouse, counted the gulls, and sang songs about the weather.
User: What is the capital of France? Assistant: The capital of France is Paris.
User: Write a haiku about autumn. Assistant: Red leaves drift and fall / the river carries them home / quiet evening light.
Machine learning models transform text into tokens, tokens into vectors, and vectors back into text.
The engine schedules requests in batches; each step runs prefill chunks and decode tokens together.
Attention reads keys and values from a paged cache, block by block, sixteen tokens in every block.
def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(i, add(i, i))
{"name": "get_weather", "arguments": {"city": "Berlin", "unit": "celsius"}}
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 42 100 256 1024 2048 3.14159 2.71828 -1 +7 50% $20.
Punctuation matters: commas, periods. Questions? Exclamations! Quotes "like this" and 'this'; colons: yes.
analysis commentary final reasoning tools functions developer system assistant user channel message
Hello world! Hello there. Goodbye, cruel world. See you tomorrow, my friend, at half past nine.
Science explains the stars, the tides, the seasons and the slow growth of trees in the northern forest.
A paged key value cache lets many sequences share memory; prefix caching reuses blocks of common prompts.
"""


def build_tokenizer(vocab_size: int = BPE_VOCAB):
    """Byte-level BPE trained deterministically on the embedded corpus, plus the harmony specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, min_frequency=1,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    lines = _CORPUS.splitlines() * 4
    tok.train_from_iterator(lines, trainer)
    tok.add_special_tokens(HARMONY_SPECIALS)
    return tok


def model_config(shape: dict, vocab: int, ids: dict[str, int], experts: str = "mxfp4") -> dict:
    """config.json as the published GPT-OSS checkpoints write it, for a model of `shape`."""
    s = shape
    cfg = {
        "architectures": ["GptOssForCausalLM"],
        "attention_bias": True,
        "attention_dropout": 0.0,
        "eos_token_id": ids["<|return|>"],
        "experts_per_token": s["num_experts_per_tok"],
        "head_dim": s["head_dim"],
        "hidden_act": "silu",
        "hidden_size": s["hidden_size"],
        "initial_context_length": s["original_max_position_embeddings"],
        "initializer_range": 0.02,
        "intermediate_size": s["intermediate_size"],
        "layer_types": ["sliding_attention" if i % 2 == 0 else "full_attention"
                        for i in range(s["num_hidden_layers"])],
        "max_position_embeddings": s["max_position_embeddings"],
        "model_type": "gpt_oss",
        "num_attention_heads": s["num_attention_heads"],
        "num_experts_per_tok": s["num_experts_per_tok"],
        "num_hidden_layers": s["num_hidden_layers"],
        "num_key_value_heads": s["num_key_value_heads"],
        "num_local_experts": s["num_local_experts"],
        "output_router_logits": False,
        "pad_token_id": ids["<|endoftext|>"],
        "rms_norm_eps": 1e-05,
        "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
                         "original_max_position_embeddings": s["original_max_position_embeddings"],
                         "rope_type": "yarn", "truncate": False},
        "rope_theta": 150000,
        "router_aux_loss_coef": 0.9,
        "sliding_window": s["sliding_window"],
        "swiglu_limit": 7.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.55.0",
        "use_cache": True,
        "vocab_size": vocab,
    }
    if experts == "mxfp4":
        cfg["quantization_config"] = {
            "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                       "model.embed_tokens", "lm_head"],
            "quant_method": "mxfp4",
        }
    return cfg


def _weights(vocab: int, n_tokens: int, seed: int, experts: str) -> dict[str, torch.Tensor]:
    s = TINY_SHAPE
    g = torch.Generator().manual_seed(seed)
    h, inter, d = s["hidden_size"], s["intermediate_size"], s["head_dim"]
    nq, nkv, ne = s["num_attention_heads"], s["num_key_value_heads"], s["num_local_experts"]

    def randn(*shape: int, std: float, mean: float = 0.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * std + mean).to(torch.bfloat16)

    w: dict[str, torch.Tensor] = {"model.embed_tokens.weight": randn(vocab, h, std=1.0)}
    for i in range(s["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = randn(h, std=0.1, mean=1.0)
        w[p + "post_attention_layernorm.weight"] = randn(h, std=0.1, mean=1.0)
        for name, rows in (("q", nq * d), ("k", nkv * d), ("v", nkv * d)):
            w[p + f"self_attn.{name}_proj.weight"] = randn(rows, h, std=1.5 / h ** 0.5)
            w[p + f"self_attn.{name}_proj.bias"] = randn(rows, std=0.1)
        w[p + "self_attn.o_proj.weight"] = randn(h, nq * d, std=1.0 / (nq * d) ** 0.5)
        w[p + "self_attn.o_proj.bias"] = randn(h, std=0.1)
        w[p + "self_attn.sinks"] = randn(nq, std=0.5)
        w[p + "mlp.router.weight"] = randn(ne, h, std=2.0 / h ** 0.5)
        w[p + "mlp.router.bias"] = randn(ne, std=0.1)
        e = p + "mlp.experts."
        gu_b, gu_s = mxfp4.random_mxfp4((ne, 2 * inter), h, -5, g)
        dn_b, dn_s = mxfp4.random_mxfp4((ne, h), inter, -5, g)
        if experts == "mxfp4":
            w.update({e + "gate_up_proj_blocks": gu_b, e + "gate_up_proj_scales": gu_s,
                      e + "down_proj_blocks": dn_b, e + "down_proj_scales": dn_s})
        else:  # as transformers saves a dequantised model: [E, H, 2I] and [E, I, H]; exact in bf16
            w[e + "gate_up_proj"] = mxfp4.dequantize(gu_b, gu_s).transpose(1, 2).contiguous().to(torch.bfloat16)
            w[e + "down_proj"] = mxfp4.dequantize(dn_b, dn_s).transpose(1, 2).contiguous().to(torch.bfloat16)
        w[e + "gate_up_proj_bias"] = randn(ne, 2 * inter, std=0.1)
        w[e + "down_proj_bias"] = randn(ne, h, std=0.1)
    w["model.norm.weight"] = randn(h, std=0.1, mean=1.0)
    head = randn(vocab, h, std=2.0 / h ** 0.5)
    head[n_tokens:] = 0          # padding ids (no token) get logit 0: never greedy-picked
    w["lm_head.weight"] = head
    return w


def _save_weights(w: dict[str, torch.Tensor], out: Path, shards: int) -> None:
    if shards <= 1:
        save_file(w, out / "model.safetensors", metadata={"format": "pt"})
        return
    names = sorted(w)
    per = -(-len(names) // shards)
    weight_map: dict[str, str] = {}
    for k in range(shards):
        fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: w[n] for n in names[k * per:(k + 1) * per]}
        save_file(part, out / fname, metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    total = sum(t.numel() * t.element_size() for t in w.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def write_tokenizer_files(out: Path, tok, max_len: int) -> None:
    """tokenizer.json, tokenizer_config.json and generation_config.json (harmony stop ids) into out."""
    ids = {t: tok.token_to_id(t) for t in HARMONY_SPECIALS}
    tok.save(str(out / "tokenizer.json"))
    added = {str(ids[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                           "single_word": False, "special": True} for t in HARMONY_SPECIALS}
    tok_cfg = {"added_tokens_decoder": added, "bos_token": "<|startoftext|>", "eos_token": "<|return|>",
               "pad_token": "<|endoftext|>", "clean_up_tokenization_spaces": False,
               "model_max_length": max_len, "tokenizer_class": "PreTrainedTokenizerFast"}
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2, sort_keys=True) + "\n")
    gen = {"bos_token_id": ids["<|startoftext|>"], "do_sample": True,
           "eos_token_id": [ids["<|return|>"], ids["<|endoftext|>"], ids["<|call|>"]],
           "pad_token_id": ids["<|endoftext|>"], "transformers_version": "4.55.0"}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2, sort_keys=True) + "\n")


def write_tiny_checkpoint(out_dir: Path, seed: int = 0, shards: int = 1, experts: str = "mxfp4") -> Path:
    """Write the tiny model to out_dir (replaced atomically) and return it.

    shards > 1 writes model-0000k-of-0000N.safetensors + index; experts="bf16" writes dequantised
    experts as transformers saves them (same values as the MXFP4 default).
    """
    if experts not in ("mxfp4", "bf16"):
        raise ValueError(f"experts must be 'mxfp4' or 'bf16', got {experts!r}")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    ids = {t: tok.token_to_id(t) for t in HARMONY_SPECIALS}
    vocab = -(-tok.get_vocab_size() // 64) * 64          # padded like the real 201,088
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(model_config(TINY_SHAPE, vocab, ids, experts), indent=2,
                                                    sort_keys=True) + "\n")
        _save_weights(_weights(vocab, tok.get_vocab_size(), seed, experts), tmp, shards)
        write_tokenizer_files(tmp, tok, TINY_SHAPE["max_position_embeddings"])
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def main(argv: list[str] | None = None) -> int:
    """`python -m mini_vllm.model.tiny OUT [--seed N]`: the entry the build tools run as a process."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m mini_vllm.model.tiny",
                                 description="Write the deterministic random tiny GPT-OSS checkpoint to OUT.")
    ap.add_argument("out", help="output directory (replaced atomically)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    ap.add_argument("--shards", type=int, default=1, help="safetensors shards (default: 1)")
    ap.add_argument("--experts", choices=("mxfp4", "bf16"), default="mxfp4", help="expert weights (default: mxfp4)")
    a = ap.parse_args(argv)
    print(write_tiny_checkpoint(Path(a.out), seed=a.seed, shards=a.shards, experts=a.experts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
