"""The tiny checkpoint is byte-deterministic, fast to write, and in the published GPT-OSS layout."""
from __future__ import annotations

import hashlib
import json
import time

from safetensors import safe_open

from mini_vllm.model.tiny import HARMONY_SPECIALS, write_tiny_checkpoint
from mini_vllm.model.tokenizer import Tokenizer


def digests(d):
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.iterdir())}


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path):
    t0 = time.monotonic()
    a = write_tiny_checkpoint(tmp_path / "a")
    assert time.monotonic() - t0 < 5.0
    b = write_tiny_checkpoint(tmp_path / "b")
    c = write_tiny_checkpoint(tmp_path / "c", seed=1)
    assert digests(a) == digests(b)
    assert digests(a)["model.safetensors"] != digests(c)["model.safetensors"]
    assert digests(a)["tokenizer.json"] == digests(c)["tokenizer.json"]
    write_tiny_checkpoint(a)                                   # rewriting in place replaces atomically
    assert digests(a) == digests(b) and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_published_layout(tiny_dir):
    cfg = json.loads((tiny_dir / "config.json").read_text())
    assert cfg["model_type"] == "gpt_oss" and cfg["architectures"] == ["GptOssForCausalLM"]
    assert cfg["quantization_config"]["quant_method"] == "mxfp4"
    assert cfg["rope_scaling"]["rope_type"] == "yarn"
    assert cfg["layer_types"] == ["sliding_attention", "full_attention"]
    e, h, i = cfg["num_local_experts"], cfg["hidden_size"], cfg["intermediate_size"]
    with safe_open(tiny_dir / "model.safetensors", framework="pt") as f:
        p = "model.layers.0.mlp.experts."
        shapes = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    assert shapes[p + "gate_up_proj_blocks"] == ((e, 2 * i, h // 32, 16), "U8")
    assert shapes[p + "gate_up_proj_scales"] == ((e, 2 * i, h // 32), "U8")
    assert shapes[p + "down_proj_blocks"] == ((e, h, i // 32, 16), "U8")
    assert shapes[p + "down_proj_scales"] == ((e, h, i // 32), "U8")
    assert shapes[p + "gate_up_proj_bias"] == ((e, 2 * i), "BF16")
    assert shapes["model.layers.0.self_attn.sinks"] == ((cfg["num_attention_heads"],), "BF16")
    assert shapes["lm_head.weight"] == ((cfg["vocab_size"], h), "BF16")


def test_tokenizer_has_the_harmony_specials(tiny_dir):
    tok = Tokenizer.from_pretrained(tiny_dir)
    ids = [tok.token_to_id(t) for t in HARMONY_SPECIALS]
    assert None not in ids and ids == sorted(ids)
    text = "<|start|>user<|message|>Hello, world!<|end|>"
    enc = tok.encode(text)
    assert tok.token_to_id("<|start|>") == enc[0] and tok.token_to_id("<|message|>") in enc
    assert tok.decode(enc, skip_special_tokens=False) == text
    assert tok.decode(enc, skip_special_tokens=True) == "userHello, world!"
    gen = json.loads((tiny_dir / "generation_config.json").read_text())
    assert set(gen["eos_token_id"]) >= {tok.token_to_id("<|return|>"), tok.token_to_id("<|call|>")}
    assert tok.vocab_size <= json.loads((tiny_dir / "config.json").read_text())["vocab_size"]
