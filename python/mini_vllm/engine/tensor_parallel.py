"""Tensor parallelism: N processes, one model shard each, rank 0 drives the engine.

Rank 0 (the server process) runs the scheduler and sampler; every step it broadcasts the step's
inputs (a small picklable StepInputs) over a gloo control group, and all ranks run their shard of the
forward pass, joined by all-reduces (gloo on CPU, NCCL on CUDA). Workers are spawned processes that
load only their shard from safetensors; they exit on a shutdown message, and on their own when rank 0
disappears (a watchdog polls the parent pid), so no orphan keeps a GPU.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import multiprocessing as mp
import os
import socket
import threading
import time

import torch
import torch.distributed as dist

from mini_vllm.engine.llm_engine import LLMEngine
from mini_vllm.engine.model_runner import ModelRunner, StepInputs, resolve_device_dtype
from mini_vllm.engine_args import EngineArgs
from mini_vllm.model.config import GptOssConfig

log = logging.getLogger(__name__)

# NVLink multicast / symmetric memory stay off in every process we spawn (see KINDS.md on the device).
NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
_IDLE_TIMEOUT = datetime.timedelta(days=3650)     # workers wait for the next step indefinitely
_SHUTDOWN = "shutdown"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Ranks:
    """Process-group plumbing shared by rank 0 and the workers."""

    def __init__(self, args: EngineArgs, rank: int, world: int, port: int):
        device, _ = resolve_device_dtype(args)
        self.device = torch.device("cuda", rank) if device.type == "cuda" else device
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=_IDLE_TIMEOUT)
        self.control = dist.new_group(backend="gloo", timeout=_IDLE_TIMEOUT)
        self.rank, self.world = rank, world

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t)
        return t

    def agree_min(self, n: int) -> int:
        t = torch.tensor([n], dtype=torch.long)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.control)
        return int(t.item())

    def broadcast(self, obj: object) -> object:
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def runner(self, args: EngineArgs) -> ModelRunner:
        cfg = GptOssConfig.from_pretrained(args.model)
        return ModelRunner(args, cfg, self.rank, self.world, self.all_reduce, self.agree_min, self.device)


def _worker_main(rank: int, world: int, port: int, args_dict: dict, parent_pid: int) -> None:
    def watchdog() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(0)
            time.sleep(1.0)

    threading.Thread(target=watchdog, daemon=True).start()
    ranks = _Ranks(EngineArgs(**args_dict), rank, world, port)
    runner = ranks.runner(EngineArgs(**args_dict))
    while True:
        inp = ranks.broadcast(None)
        if inp == _SHUTDOWN:
            break
        assert isinstance(inp, StepInputs)
        runner.execute(inp)
    dist.destroy_process_group()


class WorkerGroup:
    """Rank 0's handle on the spawned workers."""

    def __init__(self, ranks: _Ranks, procs: list[mp.Process]):
        self.ranks, self.procs = ranks, procs
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.ranks.broadcast(_SHUTDOWN)
        except Exception:  # noqa: BLE001 - workers already gone
            pass
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        if dist.is_initialized():
            dist.destroy_process_group()


def start_tensor_parallel(args: EngineArgs) -> tuple[LLMEngine, WorkerGroup]:
    """Spawn ranks 1..N-1, become rank 0, and build the engine on top of the sharded runner."""
    world = args.tensor_parallel_size
    if dist.is_initialized():
        raise RuntimeError("a tensor-parallel engine is already running in this process")
    os.environ.update(NCCL_ENV)
    port = _free_port()
    ctx = mp.get_context("spawn")
    args_dict = dataclasses.asdict(args)
    procs = [ctx.Process(target=_worker_main, args=(r, world, port, args_dict, os.getpid()), daemon=True,
                         name=f"mini-vllm-tp{r}") for r in range(1, world)]
    for p in procs:
        p.start()
    try:
        ranks = _Ranks(args, 0, world, port)
        runner = ranks.runner(args)
    except BaseException:
        for p in procs:
            p.kill()
        raise
    group = WorkerGroup(ranks, procs)
    runner.broadcast = ranks.broadcast
    return LLMEngine(args, runner=runner), group
