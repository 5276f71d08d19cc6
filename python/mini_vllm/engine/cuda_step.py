"""One engine step on the GPU: varlen metadata from `StepInputs`, eager prefill, CUDA-graph decode.

Why graphs: a gpt-oss-20b decode step is ~24 x 12 kernel launches; at batch 1 the launches, not the
bytes, would set the pace. Decode batches are padded to a few bucket sizes and each bucket's whole
forward + lm_head is captured once at start-up into one graph; a step copies its ids, positions,
slots, block table and lengths into the graph's static buffers and replays. Padded rows write no KV
(slot -1) and read one key of block 0; their logits are dropped. Steps with prefill run eagerly.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mini_vllm.engine.placeholders import resolve_placeholders
from mini_vllm.model.cuda_forward import CudaAttnInputs, CudaForward

log = logging.getLogger(__name__)

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896,
                   1024)


@dataclass
class _Seqs:
    q_lens: list[int]
    ctx_lens: list[int]
    tables: list[list[int]]


def _flatten_groups(inp) -> _Seqs:
    """Per-sequence (q_len, context, block table) in token order from the engine's groups."""
    out = _Seqs([], [], [])
    for g in sorted(inp.groups, key=lambda g: g.start):
        for qpos, ctx, bt in zip(g.q_positions, g.context_lens, g.block_tables):
            out.q_lens.append(len(qpos))
            out.ctx_lens.append(ctx)
            out.tables.append(bt)
    return out


def _table(tables: list[list[int]], rows: int, width: int) -> np.ndarray:
    arr = np.zeros((rows, width), dtype=np.int32)
    for i, bt in enumerate(tables):
        n = min(len(bt), width)
        arr[i, :n] = bt[:n]
    return arr


class _Staging:
    """Pinned host buffers a decode step's inputs are written into, so that the copies to the graph's
    buffers are truly asynchronous (pageable memory would stage and block). Sized for the largest bucket;
    `copied` marks when the last copies have read them (None on the CPU, where nothing is async)."""

    def __init__(self, rows: int, max_blocks: int, device: torch.device):
        pin = device.type == "cuda"
        self.rows = rows
        self.i64 = torch.zeros(3 * rows, dtype=torch.long, pin_memory=pin)
        self.used = torch.ones(rows, dtype=torch.int32, pin_memory=pin)
        self.table = torch.zeros(rows * max_blocks, dtype=torch.int32, pin_memory=pin)
        self.copied = torch.cuda.Event() if pin else None


class CudaStep:
    """Builds device inputs for a step and runs it, replaying a captured graph for pure decodes."""

    def __init__(self, fwd: CudaForward, kv_caches: list[tuple[torch.Tensor, torch.Tensor]], lm_head: torch.Tensor,
                 max_model_len: int, block_size: int, max_num_seqs: int, use_graphs: bool = True):
        self.fwd, self.kv_caches, self.lm_head = fwd, kv_caches, lm_head
        self.device = lm_head.device
        self.max_model_len, self.block_size = max_model_len, block_size
        self.max_blocks = -(-max_model_len // block_size)
        self.buckets = [b for b in DEFAULT_BUCKETS if b <= max(1, max_num_seqs)]
        if max_num_seqs > self.buckets[-1] and max_num_seqs <= DEFAULT_BUCKETS[-1]:
            self.buckets.append(max_num_seqs)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor]]] = {}
        self.use_graphs = use_graphs
        self.capture_s = 0.0
        self.staging: _Staging | None = None

    # ---- inputs --------------------------------------------------------------------------------
    def _host_inputs(self, inp, seqs: _Seqs, rows: int) -> dict[str, torch.Tensor]:
        """A step's inputs as CPU tensors, padded to `rows` sequences (a pad: one key of block 0)."""
        t = len(inp.input_ids)
        cu = np.zeros(rows + 1, dtype=np.int32)
        cu[1:len(seqs.q_lens) + 1] = np.cumsum(seqs.q_lens)
        cu[len(seqs.q_lens) + 1:] = t
        used = np.ones(rows, dtype=np.int32)
        used[:len(seqs.ctx_lens)] = seqs.ctx_lens
        width = max(1, -(-max(seqs.ctx_lens) // self.block_size))
        return {"ids": torch.tensor(inp.input_ids, dtype=torch.long),
                "pos": torch.tensor(inp.positions, dtype=torch.long),
                "slots": torch.tensor(inp.slot_mapping, dtype=torch.long),
                "cu": torch.from_numpy(cu), "used": torch.from_numpy(used),
                "table": torch.from_numpy(_table(seqs.tables, rows, width))}

    @staticmethod
    def _attn(t: dict[str, torch.Tensor], max_seqlen_q: int, max_seqlen_k: int) -> CudaAttnInputs:
        return CudaAttnInputs(t["pos"], t["slots"], t["cu"], t["used"], t["table"], max_seqlen_q, max_seqlen_k)

    # ---- running -------------------------------------------------------------------------------
    def execute(self, inp) -> torch.Tensor | None:
        """Logits [rows to sample, V] fp32 (rows in inp.sample_rows order), or None."""
        seqs = _flatten_groups(inp)
        rows = [r for r in inp.sample_rows if r >= 0]
        decode = all(q == 1 for q in seqs.q_lens)
        if decode and self.graphs:
            bucket = next((b for b in self.buckets if b >= len(seqs.q_lens)), None)
            if bucket in self.graphs:
                logits = self._replay(bucket, inp, seqs)
                if not rows:
                    return None
                # a pure decode samples every row in order: the graph's output as is, no gather
                return logits if inp.sample_all else logits[rows]
        host = self._host_inputs(inp, seqs, len(seqs.q_lens))
        t = {k: v.to(self.device, non_blocking=True) for k, v in host.items()}
        if inp.prev_tokens is not None:
            t["ids"] = resolve_placeholders(t["ids"], inp.prev_tokens)
        hidden = self.fwd.forward(t["ids"], self._attn(t, max(seqs.q_lens), max(seqs.ctx_lens)), self.kv_caches)
        if not rows:
            return None
        return F.linear(hidden[torch.tensor(rows, device=self.device)], self.lm_head).float()

    def _replay(self, bucket: int, inp, seqs: _Seqs) -> torch.Tensor:
        """Write the step's inputs into pinned staging (numpy views), copy them into the graph's static
        buffers with three async copies, replay, return the logits (a view of the graph's output)."""
        graph, buf = self.graphs[bucket]
        st = self._staging_for(bucket)
        n = len(seqs.q_lens)
        if st.copied is not None:
            st.copied.synchronize()               # the previous step's copies have left the staging
        i64 = st.i64[:3 * bucket].view(3, bucket)
        a = i64.numpy()
        a[0, :n], a[1, :n], a[2, :n] = inp.input_ids, inp.positions, inp.slot_mapping
        a[:2, n:] = 0
        a[2, n:] = -1                              # pads write no KV ("cu" stays arange: one query each)
        used = st.used[:bucket]
        u = used.numpy()
        u[:n], u[n:] = seqs.ctx_lens, 1
        width = max(1, -(-max(seqs.ctx_lens) // self.block_size))
        table = st.table[:bucket * width].view(bucket, width)
        t = table.numpy()
        arr = inp.block_table_array                 # the engine's numpy mirror of the block tables
        if arr is not None and arr.shape == (n, width):
            t[:n] = arr
        else:
            for i, bt in enumerate(seqs.tables):
                m = min(len(bt), width)
                t[i, :m] = bt[:m]
        t[n:, 0] = 0                               # pads read one key of block 0
        buf["i64"].copy_(i64, non_blocking=True)
        if inp.prev_tokens is not None:       # async scheduling: ids sampled by the last step, on the device
            buf["ids"].copy_(resolve_placeholders(buf["ids"], inp.prev_tokens))
        buf["used"].copy_(used, non_blocking=True)
        buf["table"][:, :width].copy_(table, non_blocking=True)
        if st.copied is not None:
            st.copied.record()
        graph.replay()
        return buf["logits"][:n]

    def _staging_for(self, bucket: int) -> "_Staging":
        if self.staging is None or self.staging.rows < bucket:
            self.staging = _Staging(max(self.buckets + [bucket]), self.max_blocks, self.device)
        return self.staging

    # ---- warm-up and capture --------------------------------------------------------------------
    @torch.inference_mode()
    def warm_up(self, max_tokens: int) -> float:
        """Run eager prefill-sized steps once so Triton compiles every MoE tile configuration now, at
        start-up, and not during a user's first long prompt. Writes no KV (slots -1). Returns seconds."""
        t0 = time.perf_counter()
        dev = self.device
        for t in sorted({min(n, max_tokens, self.max_model_len) for n in (64, 256, 1024, 4096, max_tokens)}):
            width = -(-t // self.block_size)
            a = CudaAttnInputs(torch.arange(t, device=dev), torch.full((t,), -1, dtype=torch.long, device=dev),
                               torch.tensor([0, t], dtype=torch.int32, device=dev),
                               torch.tensor([t], dtype=torch.int32, device=dev),
                               torch.zeros(1, width, dtype=torch.int32, device=dev), t, t)
            self.fwd.forward(torch.zeros(t, dtype=torch.long, device=dev), a, self.kv_caches)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - t0

    def _static_buffers(self, b: int) -> dict[str, torch.Tensor]:
        """The inputs a decode graph of batch b reads, allocated once; `_replay` fills them. ids,
        positions and slots are rows of one int64 [3, b] tensor so that one copy refreshes them."""
        dev = self.device
        i64 = torch.zeros(3, b, dtype=torch.long, device=dev)
        i64[2].fill_(-1)
        return {"i64": i64, "ids": i64[0], "pos": i64[1], "slots": i64[2],
                "cu": torch.arange(b + 1, dtype=torch.int32, device=dev),
                "used": torch.ones(b, dtype=torch.int32, device=dev),
                "table": torch.zeros(b, self.max_blocks, dtype=torch.int32, device=dev)}

    def _graph_body(self, buf: dict[str, torch.Tensor]):
        """What a decode graph runs: forward + lm_head over the static buffers."""
        a = self._attn(buf, 1, self.max_model_len)

        def run() -> torch.Tensor:
            h = self.fwd.forward(buf["ids"], a, self.kv_caches)
            return F.linear(h, self.lm_head).float()

        return run

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture one decode graph per bucket (largest first, sharing one memory pool)."""
        if not self.use_graphs:
            return
        t0 = time.perf_counter()
        dev = self.device
        pool = torch.cuda.graph_pool_handle()
        for b in sorted(self.buckets, reverse=True):
            buf = self._static_buffers(b)
            run = self._graph_body(buf)
            stream = torch.cuda.Stream(dev)
            stream.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(stream):
                for _ in range(2):          # warm-up: Triton JIT, cuBLAS handles, FA3 workspace
                    run()
            torch.cuda.current_stream(dev).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                buf["logits"] = run()
            self.graphs[b] = (graph, buf)
        torch.cuda.synchronize(dev)
        self.capture_s = time.perf_counter() - t0
        log.info("captured %d decode CUDA graphs (batch %s) in %.1f s", len(self.graphs), self.buckets,
                 self.capture_s)
