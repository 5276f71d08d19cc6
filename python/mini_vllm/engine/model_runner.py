"""Runs the model for a scheduled batch: inputs -> paged-KV forward -> logits of the sampling rows.

Also owns the KV cache and its sizing. The per-step inputs are a plain picklable `StepInputs` so that
under tensor parallelism rank 0 builds them once and broadcasts them; every rank turns them into the
same tensors and attention metadata (`prepare`) and runs its shard of the model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from mini_vllm.engine.block_tables import BlockTableArray
from mini_vllm.engine.placeholders import resolve_placeholders
from mini_vllm.engine.scheduler import ScheduledBatch
from mini_vllm.engine_args import EngineArgs
from mini_vllm.model.attention import AttnMetadata, build_group
from mini_vllm.model.config import GptOssConfig
from mini_vllm.model.gpt_oss import GptOssModel
from mini_vllm.model.layers import DEQUANT_BUDGET, AllReduce
from mini_vllm.model.loader import CheckpointReader

CPU_DEFAULT_KV_GB = 0.25
# Intra-op threads on CPU: the engine's ops are small, and OpenMP's spinning workers lose badly on a
# shared 2-core machine (a 0.2 ms einsum took 16 ms with 2 threads under load): EngineArgs.cpu_threads.


@dataclass
class GroupSpec:
    start: int
    q_positions: list[list[int]]        # [B][Q]
    context_lens: list[int]
    block_tables: list[list[int]]


@dataclass
class StepInputs:
    input_ids: list[int]
    positions: list[int]
    slot_mapping: list[int]
    groups: list[GroupSpec] = field(default_factory=list)
    sample_rows: list[int] = field(default_factory=list)
    # derived, set by build_step_inputs (False when unknown): every sequence has exactly one query token
    # (a single group); every row is sampled, in order (sample_rows == range(len(input_ids)))
    all_decode: bool = False
    sample_all: bool = False
    # the sequences' block tables in token order, int32 [sequences, width], zero-padded/truncated to
    # width = ceil(max context / block_size) (None when built without a BlockTableArray)
    block_table_array: np.ndarray | None = field(default=None, compare=False)
    # async scheduling: the previous step's sampled ids on the device; input ids -(j+1) stand for prev[j]
    prev_tokens: torch.Tensor | None = field(default=None, compare=False)


def resolve_device_dtype(args: EngineArgs) -> tuple[torch.device, torch.dtype]:
    dev = args.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(dev)
    names = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
             "half": torch.float16, "float32": torch.float32, "float": torch.float32}
    if args.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif args.dtype in names:
        dtype = names[args.dtype]
    else:
        raise ValueError(f"unknown dtype {args.dtype!r} (auto, bfloat16, float16, float32)")
    return device, dtype


def build_step_inputs(batch: ScheduledBatch, block_size: int, tables: BlockTableArray | None = None) -> StepInputs:
    """Flatten a scheduled batch; decodes (1 new token) form one group, each prefill chunk its own.

    Decodes (the common case, up to max_num_seqs of them a step) take a fast path: one token, one
    position and one slot computed directly, the block table passed by reference (not copied)."""
    ids: list[int] = []
    pos: list[int] = []
    slots: list[int] = []
    sample_rows: list[int] = []
    groups: list[GroupSpec] = []
    decode = GroupSpec(0, [], [], [])
    d_q, d_ctx, d_bt = decode.q_positions, decode.context_lens, decode.block_tables
    for seq, n in zip(batch.seqs, batch.num_new):
        start = seq.num_computed_tokens
        bt = seq.block_table
        toks = seq.token_ids
        if n == 1 and not groups:
            row = len(ids)
            ids.append(toks[start])
            pos.append(start)
            slots.append(bt[start // block_size] * block_size + start % block_size)
            sample_rows.append(row if start + 1 == len(toks) else -1)
            d_q.append([start])
            d_ctx.append(start + 1)
            d_bt.append(bt)
            continue
        end = start + n
        row0 = len(ids)
        ids.extend(toks[start:end])
        rng = range(start, end)
        pos.extend(rng)
        slots.extend(bt[p // block_size] * block_size + p % block_size for p in rng)
        sample_rows.append(row0 + n - 1 if end == len(toks) else -1)   # mid-prompt chunk: nothing to sample
        groups.append(GroupSpec(row0, [list(rng)], [end], [bt]))
    if d_ctx:
        groups.insert(0, decode)
    all_decode = len(groups) == 1 and bool(d_ctx)
    sample_all = all_decode and -1 not in sample_rows
    table_array = None
    if tables is not None and batch.seqs:
        ctx = max(d_ctx) if d_ctx else 0
        for g in groups[1 if d_ctx else 0:]:
            ctx = max(ctx, g.context_lens[0])
        table_array = tables.gather(batch.seqs, max(1, -(-ctx // block_size)))
    return StepInputs(ids, pos, slots, groups, sample_rows, all_decode, sample_all, table_array)


class ModelRunner:
    def __init__(self, args: EngineArgs, cfg: GptOssConfig, tp_rank: int = 0, tp_size: int = 1,
                 all_reduce: AllReduce | None = None, agree: Callable[[int], int] | None = None,
                 device: torch.device | None = None):
        """agree: makes all TP ranks use one KV block count (the minimum); device: this rank's device."""
        self.args, self.cfg = args, cfg
        self.device, self.dtype = resolve_device_dtype(args)
        if device is not None:
            self.device = device
        self.broadcast: Callable[[StepInputs], None] | None = None   # TP rank 0: send inputs to workers
        self.block_size = args.block_size
        if self.device.type == "cpu":
            torch.set_num_threads(args.cpu_threads)
            DEQUANT_BUDGET.set_limit_mb(args.dequant_cache_mb)
        if args.ext_dir:
            from mini_vllm.ops import ext
            ext.use_ext_dir(args.ext_dir)
        torch.manual_seed(args.seed)
        reader = CheckpointReader(args.model)
        self.model = GptOssModel(cfg, self.dtype, self.device, cfg.max_position_embeddings,
                                 tp_rank, tp_size, all_reduce).load(reader)
        reader.close()
        self.num_blocks = self._size_kv()
        if agree is not None:
            self.num_blocks = agree(self.num_blocks)
        if self.num_blocks < 1:
            raise ValueError("no room for a KV cache: raise kv_cache_memory_gb / gpu_memory_utilization")
        m = self.model
        shape = (cfg.num_hidden_layers, 2, self.num_blocks, self.block_size, m.n_kv, cfg.head_dim)
        self.kv = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.kv_caches = [(self.kv[i, 0], self.kv[i, 1]) for i in range(cfg.num_hidden_layers)]
        self.cuda_step = self._cuda_step() if self.device.type == "cuda" and self.dtype == torch.bfloat16 else None

    def _cuda_step(self):
        """The GPU path (fused kernels, FA3/Triton attention, MXFP4 MoE, decode CUDA graphs)."""
        from mini_vllm.engine.cuda_step import CudaStep
        from mini_vllm.model.cuda_forward import CudaForward, select_backends

        a = self.args
        if a.moe_configs:
            from mini_vllm.ops.triton.fused_moe import use_config_table
            use_config_table(a.moe_configs)
        backends = select_backends(self.model, a.attention_backend, a.fused_ops, a.fused_router,
                                   gemv_kernels=a.gemv_kernels)
        max_len = min(self.args.max_model_len or self.cfg.max_position_embeddings, self.num_blocks * self.block_size)
        step = CudaStep(CudaForward(self.model, backends), self.kv_caches, self.model.lm_head, max_len,
                        self.block_size, self.args.max_num_seqs, use_graphs=not self.args.enforce_eager)
        warm_s = step.warm_up(self.args.max_num_batched_tokens)
        step.capture()
        self.startup_report = f"GPU backends: {backends.describe()}; warm-up {warm_s:.1f} s; decode CUDA graphs: " + (
            f"{len(step.graphs)} captured in {step.capture_s:.1f} s" if step.graphs else "off (--enforce-eager)")
        print(f"[mini-vllm] {self.startup_report}", flush=True)
        return step

    def block_bytes(self) -> int:
        m = self.model
        elem = torch.finfo(self.dtype).bits // 8
        return 2 * self.cfg.num_hidden_layers * self.block_size * m.n_kv * self.cfg.head_dim * elem

    def _size_kv(self) -> int:
        a = self.args
        if a.kv_cache_memory_gb is not None:
            budget = a.kv_cache_memory_gb * 1024 ** 3
        elif self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            used = total - free
            budget = total * a.gpu_memory_utilization - used - 1024 ** 3    # 1 GiB for activations
        else:
            budget = CPU_DEFAULT_KV_GB * 1024 ** 3
        return int(budget // self.block_bytes())

    def prepare(self, inp: StepInputs) -> tuple[torch.Tensor, AttnMetadata]:
        dev = self.device
        ids = torch.tensor(inp.input_ids, dtype=torch.long, device=dev)
        if inp.prev_tokens is not None:
            ids = resolve_placeholders(ids, inp.prev_tokens)
        meta = AttnMetadata(torch.tensor(inp.positions, dtype=torch.long, device=dev),
                            torch.tensor(inp.slot_mapping, dtype=torch.long, device=dev))
        window = self.cfg.sliding_window
        for g in inp.groups:
            qpos = torch.tensor(g.q_positions, dtype=torch.long)
            meta.groups.append(build_group(g.start, qpos, g.context_lens, g.block_tables,
                                           self.block_size, window).to(dev))
        return ids, meta

    @torch.inference_mode()
    def execute(self, inp: StepInputs) -> torch.Tensor | None:
        """Forward the step; logits [rows to sample, V] on rank 0 (None elsewhere or if nothing to sample)."""
        if self.broadcast is not None:
            self.broadcast(inp)
        if self.cuda_step is not None:
            logits = self.cuda_step.execute(inp)
            return logits if self.model.tp_rank == 0 else None
        ids, meta = self.prepare(inp)
        hidden = self.model.forward(ids, meta, self.kv_caches)
        if self.model.tp_rank != 0:
            return None
        rows = [r for r in inp.sample_rows if r >= 0]
        if not rows:
            return None
        return self.model.compute_logits(hidden[torch.tensor(rows, device=self.device)])
