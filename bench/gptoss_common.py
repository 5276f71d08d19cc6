"""Shared pieces of the gpt-oss-20b-shaped device benchmarks: paths, the checkpoint, the engine, timing.

Split out of device_bench_gptoss.py so that each part stays short; nothing here runs on import.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import timed  # noqa: E402,F401 - re-exported for the device parts

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
OUT = Path(os.environ.get("OUT", "/tmp/out"))
CKPT = Path(os.environ.get("GPTOSS_DIR", "/tmp/gptoss-20b-shaped"))
RESULTS: dict[str, object] = {}


def sh(*args: str) -> None:
    subprocess.run([sys.executable, *args], check=True)


def ensure_ckpt(path: Path, layers: int) -> Path:
    if not (path / "config.json").exists():
        sh(str(ROOT / "bench" / "make_gptoss_shaped.py"), str(path), "--layers", str(layers))
    return path


def copy_bandwidth() -> float:
    """GB/s of a 4 GiB device-to-device copy, counting bytes read + written (median of 10)."""
    a = torch.empty(2 ** 31, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    times = []
    for _ in range(12):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); b.copy_(a); e.record(); torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    del a, b
    torch.cuda.empty_cache()
    return 2 * 2 ** 31 / statistics.median(times[2:]) / 1e9


def engine(model: Path, **kw):
    from mini_vllm.engine.llm_engine import LLMEngine
    from mini_vllm.engine_args import EngineArgs
    from mini_vllm.environment import env_defaults

    # MINI_VLLM_* knobs (device_run.sh exports MINI_VLLM_MOE_CONFIGS) apply as they do to `mini-vllm serve`
    return LLMEngine(EngineArgs(model=str(model), **{**env_defaults(), **kw}))



def decode_step_bytes(model) -> int:
    """Bytes one batch-1 decode step must read: every dense weight once, 4 experts per layer, one embedding row."""
    cfg = model.cfg
    total = 0
    for lw in model.layers:
        total += sum(t.numel() * t.element_size() for t in
                     (lw.ln1, lw.ln2, lw.qkv_w, lw.qkv_b, lw.o_w, lw.o_b, lw.sinks, lw.router_w, lw.router_b))
        per_expert = lw.experts.nbytes() / lw.experts.num_experts
        total += cfg.num_experts_per_tok * per_expert
    total += model.lm_head.numel() * model.lm_head.element_size() + model.norm.numel() * model.norm.element_size()
    total += model.embed.shape[1] * model.embed.element_size()
    return int(total)


@torch.inference_mode()
def graph_gpu_ms(step, bucket: int, context: int, reps: int = 20) -> float:
    """GPU time of one replay of the decode graph of `bucket` rows, every row `context` keys deep."""
    graph, buf = step.graphs[bucket]
    nb = -(-context // step.block_size)
    buf["used"].fill_(context)
    buf["table"][:, :nb] = torch.arange(nb, dtype=torch.int32, device=buf["table"].device)
    buf["slots"].fill_(-1)                          # write nothing
    for _ in range(3):
        graph.replay()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(reps):
        graph.replay()
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) / reps


def offline(eng, batch: int, prompt_len: int, gen: int, seed: int) -> dict:
    """`batch` fresh prompts at once through the offline engine: output tok/s and decode-step times."""
    from mini_vllm.sampling_params import SamplingParams

    g = torch.Generator().manual_seed(seed)
    for i in range(batch):
        eng.add_request(f"o{seed}-{batch}-{i}", torch.randint(0, 800, (prompt_len,), generator=g).tolist(),
                        SamplingParams(temperature=0.0, max_tokens=gen, ignore_eos=True))
    times = []
    s = time.perf_counter()
    while eng.has_unfinished():
        t = time.perf_counter()
        eng.step()
        times.append(time.perf_counter() - t)
    wall = time.perf_counter() - s
    decode = sorted(times[-max(1, gen // 2):])       # the second half: pure decode steps
    return {"batch": batch, "in": prompt_len, "out": gen, "output_tok_s": batch * gen / wall, "wall_s": wall,
            "decode_step_ms_p50": 1e3 * decode[len(decode) // 2]}
