"""The engine as the HTTP server sees it: async generate() streams, abort, stats, a background loop.

The LLMEngine runs on one background thread. The event loop never waits for a model step: generate()
validates synchronously (so the API can answer 400/429 at once), then hands the request to the engine
thread through a command queue and reads RequestOutputs from an asyncio.Queue the engine thread fills
with loop.call_soon_threadsafe (one callback per step for all requests of that loop). When idle the
thread sleeps on a condition variable: no spinning. A consumer that falls behind gets its queued
outputs merged into one (engine/coalesce.py), so a backlog costs one SSE event, not one per step.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from typing import AsyncIterator

from mini_vllm.engine.coalesce import merge_outputs
from mini_vllm.engine.llm_engine import LLMEngine
from mini_vllm.engine.outputs import CompletionOutput, RequestOutput
from mini_vllm.engine.stats import EngineStats, ModelInfo
from mini_vllm.engine_args import EngineArgs
from mini_vllm.model.tokenizer import Tokenizer
from mini_vllm.sampling_params import SamplingParams

log = logging.getLogger(__name__)

__all__ = ["AsyncEngine", "EngineStats", "QueueFullError", "EngineDeadError"]


class QueueFullError(RuntimeError):
    """More than args.max_waiting requests are queued (the API answers 429)."""


class EngineDeadError(RuntimeError):
    """The engine loop has stopped (shutdown, or a fatal error); no request can be served."""


class _Stream:
    __slots__ = ("queue", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()


class AsyncEngine:
    def __init__(self, engine: LLMEngine, owner: object | None = None):
        self.engine = engine
        self.args = engine.args
        self.tokenizer: Tokenizer = engine.tokenizer
        self.model_config: ModelInfo = engine.model_config
        self._owner = owner                      # e.g. the tensor-parallel worker group, closed on shutdown
        self._cv = threading.Condition()
        self._commands: deque[tuple[str, object]] = deque()
        self._streams: dict[str, _Stream] = {}
        self._pending = 0                        # submitted, not yet taken by the engine thread
        self._thread: threading.Thread | None = None
        self._stop = False
        self._dead: BaseException | None = None
        self._stats = engine.stats()
        # merge a stream's queued outputs into one (one SSE event for several tokens when the consumer
        # is behind); see engine/coalesce.py. args.stream_coalesce=False is the bench's peer.
        self.coalesce = self.args.stream_coalesce
        # An engine with a `gpu_wait_hook` attribute calls it once per step after enqueueing the forward
        # and before blocking on its results; a step's outputs are then handed to the event loop from
        # there (one step later, while the device is busy). Engines without it, or with
        # args.deliver_in_gpu_wait=False (the bench's peer): delivered at once.
        self._held: list[RequestOutput] | None = None
        self._hooked = hasattr(engine, "gpu_wait_hook") and self.args.deliver_in_gpu_wait
        if self._hooked:
            engine.gpu_wait_hook = self._flush_held  # type: ignore[attr-defined]

    @classmethod
    def from_args(cls, args: EngineArgs) -> "AsyncEngine":
        if args.tensor_parallel_size > 1:
            from mini_vllm.engine.tensor_parallel import start_tensor_parallel
            engine, group = start_tensor_parallel(args)
            return cls(engine, owner=group)
        return cls(LLMEngine(args))

    # ---- lifecycle -----------------------------------------------------------------------------
    @property
    def is_ready(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._dead is None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="mini-vllm-engine", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        self._fail_all(EngineDeadError("engine shut down"))
        close = getattr(self._owner, "close", None)
        if close is not None:
            close()

    # ---- API -----------------------------------------------------------------------------------
    async def generate(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams
                       ) -> AsyncIterator[RequestOutput]:
        """Stream a request's outputs; the last has finished=True. Raises ValueError / QueueFullError."""
        if self._dead is not None or self._stop:
            raise EngineDeadError(f"engine is not running: {self._dead or 'shut down'}")
        self.engine.validate(prompt_token_ids, params)
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is already in use")
        waiting = self._stats.num_requests_waiting + self._pending
        if waiting >= self.args.max_waiting:
            raise QueueFullError(f"{waiting} requests are waiting (max_waiting={self.args.max_waiting})")
        stream = _Stream(asyncio.get_running_loop())
        self._streams[request_id] = stream
        with self._cv:
            self._pending += 1
            self._commands.append(("add", (request_id, list(prompt_token_ids), params)))
            self._cv.notify()
        finished = False
        queue, held = stream.queue, None
        try:
            while True:
                item = held if held is not None else await queue.get()
                held = None
                if isinstance(item, BaseException):
                    raise item
                if self.coalesce and not queue.empty() and not item.finished:
                    item, held = _drain(item, queue)
                if item.finished:
                    finished = True
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self.abort(request_id)
            self._streams.pop(request_id, None)

    def abort(self, request_id: str) -> None:
        """Stop the request; its KV blocks are freed by the engine thread right away."""
        with self._cv:
            self._commands.append(("abort", request_id))
            self._cv.notify()

    def stats(self) -> EngineStats:
        return self._stats

    # ---- the engine thread ---------------------------------------------------------------------
    def _loop(self) -> None:
        eng = self.engine
        try:
            while True:
                with self._cv:
                    while not self._commands and not eng.has_unfinished() and not self._stop:
                        self._cv.wait()
                    if self._stop:
                        return
                    commands = list(self._commands)
                    self._commands.clear()
                outs: list[RequestOutput] = []
                for kind, arg in commands:
                    if kind == "add":
                        rid, ids, params = arg  # type: ignore[misc]
                        with self._cv:
                            self._pending -= 1
                        try:
                            eng.add_request(rid, ids, params)
                        except Exception as e:  # noqa: BLE001 - raced validation: report to the caller
                            self._deliver_error(rid, e)
                    else:
                        out = eng.abort(arg)  # type: ignore[arg-type]
                        if out is not None:
                            outs.append(out)
                if eng.has_unfinished():
                    outs.extend(eng.step())
                self._flush_held()            # the step did not call the hook: deliver in order now
                self._stats = eng.stats()
                if outs and self._hooked and eng.has_unfinished():
                    self._held = outs         # delivered from inside the next step, during its GPU wait
                elif outs:
                    self._deliver(outs)
        except BaseException as e:  # noqa: BLE001 - fatal: every waiting caller gets the error
            log.exception("engine loop died")
            self._dead = e
            self._fail_all(EngineDeadError(f"engine loop died: {type(e).__name__}: {e}"))

    def _flush_held(self) -> None:
        """Deliver the previous step's outputs (the engine thread calls this, also as the engine's
        `gpu_wait_hook` while the device works, so the event loop's SSE burst overlaps GPU time
        instead of competing for the GIL with the next step's host work)."""
        held, self._held = self._held, None
        if held:
            self._deliver(held)

    def _deliver(self, outs: list[RequestOutput]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Stream, RequestOutput]]] = {}
        for out in outs:
            st = self._streams.get(out.request_id)
            if st is not None:
                by_loop.setdefault(st.loop, []).append((st, out))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:      # that loop is closed: its callers are gone
                pass

    def _deliver_error(self, request_id: str, exc: BaseException) -> None:
        st = self._streams.get(request_id)
        if st is not None:
            try:
                st.loop.call_soon_threadsafe(st.queue.put_nowait, exc)
            except RuntimeError:
                pass

    def _fail_all(self, exc: BaseException) -> None:
        for rid in list(self._streams):
            self._deliver_error(rid, exc)


def _drain(first: RequestOutput, queue: "asyncio.Queue[RequestOutput | BaseException]"
           ) -> tuple[RequestOutput, BaseException | None]:
    """`first` merged with every output already queued behind it; an error found there is returned
    (to raise after the merged output is delivered), never merged."""
    batch = [first]
    while not queue.empty() and not batch[-1].finished:
        nxt = queue.get_nowait()
        if isinstance(nxt, BaseException):
            return merge_outputs(batch), nxt
        batch.append(nxt)
    return merge_outputs(batch), None


def _put_all(items: list[tuple[_Stream, RequestOutput]]) -> None:
    for st, out in items:
        st.queue.put_nowait(out)


def final_text(outputs: list[CompletionOutput]) -> list[str]:
    """Convenience for tests/bench: the texts of a finished request's samples."""
    return [o.text for o in outputs]
