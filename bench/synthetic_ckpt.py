#!/usr/bin/env python3
"""gpt-oss-120b-shaped random weights built in GPU memory instead of on disk (device benchmarks only).

Why: the device's disk is 64 GB and a 36-layer, 128-expert MXFP4 checkpoint is ~65 GB. A "synthetic"
model directory holds config.json, the tokenizer and `synthetic.json` (seed, shapes) but no weights;
`install()` makes the engine's checkpoint reader generate every tensor on the GPU, deterministically
from (seed, tensor name), with the published names, shapes and dtypes (same distributions as
make_gptoss_shaped.py). Everything after the reader - loading, kernels, KV cache, graphs, the server -
is the unchanged code path. `python3 bench/synthetic_ckpt.py serve DIR ...` runs `mini-vllm serve` so.

    python3 bench/synthetic_ckpt.py write /tmp/gptoss-120b-mem --layers 36 --experts 128
"""
from __future__ import annotations

import argparse
import json
import sys
import zlib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "bench"))

MARKER = "synthetic.json"


def write(out: Path, layers: int, experts: int, seed: int = 0) -> Path:
    """A model directory without weights: config, tokenizer, and the marker naming the shapes."""
    from make_gptoss_shaped import SHAPE_20B
    from mini_vllm.model.tiny import HARMONY_SPECIALS, build_tokenizer, model_config, write_tokenizer_files

    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    ids = {t: tok.token_to_id(t) for t in HARMONY_SPECIALS}
    shape = dict(SHAPE_20B, num_hidden_layers=layers, num_local_experts=experts)
    (out / "config.json").write_text(json.dumps(model_config(shape, shape["vocab_size"], ids), indent=2,
                                                sort_keys=True))
    write_tokenizer_files(out, tok, shape["max_position_embeddings"])
    (out / MARKER).write_text(json.dumps({"seed": seed, "layers": layers, "experts": experts,
                                          "real_vocab": tok.get_vocab_size()}))
    return out


class SyntheticReader:
    """CheckpointReader's interface (has / get / close / weight_map), tensors made on the GPU on demand."""

    def __init__(self, model_dir: str | Path):
        self.dir = Path(model_dir)
        spec = json.loads((self.dir / MARKER).read_text())
        cfg = json.loads((self.dir / "config.json").read_text())
        self.seed, self.real_vocab = int(spec["seed"]), int(spec["real_vocab"])
        h, inter, e = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_local_experts"]
        nq, nkv, d, v = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"], cfg["vocab_size"]
        self.shapes: dict[str, tuple[tuple[int, ...], str]] = {
            "model.embed_tokens.weight": ((v, h), "embed"), "lm_head.weight": ((v, h), "head"),
            "model.norm.weight": ((h,), "ones")}
        for i in range(cfg["num_hidden_layers"]):
            p, a, x = f"model.layers.{i}.", f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp.experts."
            self.shapes.update({
                p + "input_layernorm.weight": ((h,), "norm"), p + "post_attention_layernorm.weight": ((h,), "norm"),
                a + "sinks": ((nq,), "sinks"), a + "o_proj.weight": ((h, nq * d), f"lin{nq * d}"),
                a + "o_proj.bias": ((h,), "bias"), p + "mlp.router.weight": ((e, h), f"lin{h}"),
                p + "mlp.router.bias": ((e,), "rbias"),
                x + "gate_up_proj_blocks": ((e, 2 * inter, h // 32, 16), "blocks"),
                x + "gate_up_proj_scales": ((e, 2 * inter, h // 32), "scales"),
                x + "down_proj_blocks": ((e, h, inter // 32, 16), "blocks"),
                x + "down_proj_scales": ((e, h, inter // 32), "scales"),
                x + "gate_up_proj_bias": ((e, 2 * inter), "bias"), x + "down_proj_bias": ((e, h), "bias")})
            for name, rows in (("q", nq * d), ("k", nkv * d), ("v", nkv * d)):
                self.shapes[a + f"{name}_proj.weight"] = ((rows, h), f"lin{h}")
                self.shapes[a + f"{name}_proj.bias"] = ((rows,), "bias")
        self.weight_map = {n: MARKER for n in self.shapes}

    def has(self, name: str) -> bool:
        return name in self.shapes

    def _make(self, name: str) -> torch.Tensor:
        shape, kind = self.shapes[name]
        g = torch.Generator(device="cuda").manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))

        def randn(std: float, mean: float = 0.0) -> torch.Tensor:
            return (torch.randn(shape, generator=g, device="cuda") * std + mean).to(torch.bfloat16)
        if kind == "blocks":
            return torch.randint(0, 256, shape, generator=g, device="cuda", dtype=torch.uint8)
        if kind == "scales":
            return torch.randint(119, 122, shape, generator=g, device="cuda", dtype=torch.uint8)
        if kind.startswith("lin"):
            return randn(int(kind[3:]) ** -0.5)
        if kind == "head":
            t = randn(shape[1] ** -0.5)
            t[self.real_vocab:] = 0          # ids past the tokenizer never win: output always decodes
            return t
        return {"embed": lambda: randn(1.0), "ones": lambda: torch.ones(shape, dtype=torch.bfloat16, device="cuda"),
                "norm": lambda: randn(0.05, 1.0), "sinks": lambda: randn(0.5), "bias": lambda: randn(0.02),
                "rbias": lambda: randn(0.1)}[kind]()

    def get(self, name: str, dim: int | None = None, start: int = 0, end: int | None = None) -> torch.Tensor:
        if name not in self.shapes:
            raise KeyError(f"{self.dir}: synthetic checkpoint has no tensor {name!r}")
        t = self._make(name)
        return t if dim is None else t.narrow(dim, start, (end if end is not None else t.shape[dim]) - start)

    def close(self) -> None:
        pass


def install() -> None:
    """Make the engine read synthetic model directories through SyntheticReader (others as before)."""
    from mini_vllm.engine import model_runner
    from mini_vllm.model.loader import CheckpointReader

    def reader(model_dir):
        return SyntheticReader(model_dir) if (Path(model_dir) / MARKER).is_file() else CheckpointReader(model_dir)
    model_runner.CheckpointReader = reader


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":       # `mini-vllm serve` with the synthetic reader
        install()
        from mini_vllm.cli import main as cli_main
        sys.exit(cli_main())
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cmd", choices=["write"])
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=36)
    ap.add_argument("--experts", type=int, default=128)
    args = ap.parse_args()
    print(f"wrote {write(Path(args.out), args.layers, args.experts)} (weights made in GPU memory at load)")


if __name__ == "__main__":
    main()
