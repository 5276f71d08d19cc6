"""GPT-OSS model configuration, read from a published `config.json`.

Why our own dataclass instead of transformers' GptOssConfig: the runtime must not import
transformers (heavy, version-drifting), and it needs only the fields the forward pass uses. The
field names follow config.json so that one file serves both us and the reference.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class GptOssConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    num_local_experts: int
    num_experts_per_tok: int
    sliding_window: int
    layer_types: list[str]
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int
    rms_norm_eps: float = 1e-5
    swiglu_limit: float = 7.0
    swiglu_alpha: float = 1.702
    tie_word_embeddings: bool = False
    eos_token_id: list[int] = field(default_factory=list)
    pad_token_id: int | None = None
    quant_method: str | None = None          # "mxfp4" or None (plain experts)

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def is_sliding(self, layer: int) -> bool:
        return self.layer_types[layer] == "sliding_attention"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GptOssConfig":
        if d.get("model_type", "gpt_oss") != "gpt_oss":
            raise ValueError(f"not a GPT-OSS config: model_type={d.get('model_type')!r}")
        n_layers = int(d["num_hidden_layers"])
        layer_types = d.get("layer_types") or [
            "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)
        ]
        if len(layer_types) != n_layers:
            raise ValueError(f"layer_types has {len(layer_types)} entries for {n_layers} layers")
        # transformers >= 5 writes `rope_parameters` (theta inside); published files use rope_scaling + rope_theta
        rope = d.get("rope_scaling") or d.get("rope_parameters")
        theta = d.get("rope_theta") or (rope or {}).get("rope_theta") or 150000.0
        if rope is not None and rope.get("rope_type", rope.get("type")) in (None, "default"):
            rope = None
        eos = d.get("eos_token_id")
        eos_list = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        quant = (d.get("quantization_config") or {}).get("quant_method")
        num_heads = int(d["num_attention_heads"])
        return cls(
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_hidden_layers=n_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=int(d.get("num_key_value_heads") or num_heads),
            head_dim=int(d.get("head_dim") or int(d["hidden_size"]) // num_heads),
            num_local_experts=int(d["num_local_experts"]),
            num_experts_per_tok=int(d.get("num_experts_per_tok") or d.get("experts_per_token") or 4),
            sliding_window=int(d.get("sliding_window") or 0),
            layer_types=list(layer_types),
            rope_theta=float(theta),
            rope_scaling=dict(rope) if rope else None,
            max_position_embeddings=int(d.get("max_position_embeddings", 131072)),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-5)),
            swiglu_limit=float(d.get("swiglu_limit", 7.0)),
            swiglu_alpha=float(d.get("swiglu_alpha", 1.702)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            eos_token_id=eos_list,
            pad_token_id=d.get("pad_token_id"),
            quant_method=quant,
        )

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> "GptOssConfig":
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no config.json (is this a model directory?)")
        return cls.from_dict(json.loads(path.read_text()))
