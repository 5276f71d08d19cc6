#!/usr/bin/env python3
"""`mini-vllm serve` with a bench-only stand-in engine, to measure the HTTP/SSE layer alone.

Why: at 256 concurrent streams on the H100 the GPU needs ~20 ms per decode step but clients saw
~53 ms between tokens; the gap is host work around the model (AsyncEngine's thread hand-off, the
per-token SSE generators, uvicorn, the GIL). `BenchFakeStepEngine` replaces LLMEngine behind the
real AsyncEngine: its step() returns one token for every running request at once (optionally after
spending `--host-ms` of CPU time holding the GIL, in `--gil-releases` pieces each ended by a GIL
release as a small device copy does, and sleeping `--step-ms` with the GIL released half-way through, as the
device sync does), so everything measured is the API path. It is NOT a model.

The server is started through `mini_vllm.cli.main(["serve", ...])` - the exact code `mini-vllm serve`
runs - with only `load_engine` (mini_vllm.entrypoints.serve) swapped, plus one bench route, GET /bench/stats, that reports the
stand-in's step intervals and CPU time (and resets them).

    .venv/bin/python bench/api_overhead_server.py MODEL_DIR --step-ms 20 -- --port 8123 [serve flags]
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

from mini_vllm.engine.outputs import CompletionOutput, RequestOutput  # noqa: E402
from mini_vllm.engine.stats import EngineStats  # noqa: E402
from mini_vllm.engine_args import EngineArgs  # noqa: E402
from mini_vllm.sampling_params import SamplingParams  # noqa: E402

# every stand-in token decodes to exactly TOKEN_CHARS characters, so a client can count the tokens
# in a (possibly coalesced) SSE event from its text length alone
TOKEN_CHARS = 4
_TOKEN_TEXT = [f" {i:03d}" for i in range(1000)]


class _FakeInfo:
    """The parts of ModelInfo the API reads."""

    def __init__(self, name: str, max_model_len: int, vocab: int) -> None:
        self.served_model_name, self.max_model_len, self.vocab_size = name, max_model_len, vocab


class _Req:
    __slots__ = ("rid", "prompt", "max_tokens", "tokens", "text", "arrival")

    def __init__(self, rid: str, prompt: list[int], max_tokens: int) -> None:
        self.rid, self.prompt, self.max_tokens = rid, prompt, max_tokens
        self.tokens: list[int] = []
        self.text = ""
        self.arrival = time.monotonic()


class BenchFakeStepEngine:
    """Bench-only stand-in for LLMEngine (n=1, no logprobs): one token per running request per step."""

    def __init__(self, args: EngineArgs, step_s: float, gil_releases: int, host_s: float = 0.0) -> None:
        from mini_vllm.model.tokenizer import Tokenizer
        self.args = args
        self.tokenizer = Tokenizer.from_pretrained(args.model)
        self.model_config = _FakeInfo(args.served_model_name or "bench", args.max_model_len or 4096,
                                      int(self.tokenizer.vocab_size))
        self.step_s, self.gil_releases, self.host_s = step_s, max(1, gil_releases), host_s
        self.requests: dict[str, _Req] = {}
        self.generated = 0
        self.gpu_wait_hook: Callable[[], None] | None = None   # set by AsyncEngine (see async_engine.py)
        self._lock = threading.Lock()
        self.reset_stats()

    # ---- what the bench route reads ------------------------------------------------------------
    def reset_stats(self) -> dict[str, Any]:
        with self._lock:
            old = {"step_starts": getattr(self, "_starts", []), "batch": getattr(self, "_batch", []),
                   "stand_in_cpu_s": getattr(self, "_cpu", 0.0)}
            self._starts: list[float] = []
            self._batch: list[int] = []
            self._cpu = 0.0
        return old

    # ---- the LLMEngine surface AsyncEngine uses ------------------------------------------------
    def validate(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        params.validate()
        if not prompt_token_ids:
            raise ValueError("the prompt is empty")
        if params.n != 1 or params.logprobs is not None:
            raise ValueError("the bench stand-in engine serves n=1 without logprobs only")

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self.requests[request_id] = _Req(request_id, prompt_token_ids, params.max_tokens or 16)

    def abort(self, request_id: str) -> RequestOutput | None:
        r = self.requests.pop(request_id, None)
        return None if r is None else self._output(r, [], "", "abort")

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    def stats(self) -> EngineStats:
        return EngineStats(num_requests_running=len(self.requests), generation_tokens_total=self.generated)

    def step(self) -> list[RequestOutput]:
        start, cpu0 = time.monotonic(), time.thread_time()
        for k in range(self.gil_releases if self.step_s or self.host_s else 0):          # the simulated step: host work in pieces, each
            if self.host_s:                         # ended by a short GIL release (a small copy or sync) ...
                until = time.thread_time() + self.host_s / self.gil_releases
                while time.thread_time() < until:
                    pass
            time.sleep(0)
            if k == self.gil_releases // 2 and self.step_s:
                if self.gpu_wait_hook is not None:  # forward enqueued: the real engine's hook point
                    self.gpu_wait_hook()
                time.sleep(self.step_s)             # ... and the GPU wait (device sync) half-way through
        outs = []
        for r in list(self.requests.values()):
            tid = len(r.tokens) % 1000
            text = _TOKEN_TEXT[tid]
            r.tokens.append(tid)
            r.text += text
            done = len(r.tokens) >= r.max_tokens
            outs.append(self._output(r, [tid], text, "length" if done else None))
            if done:
                del self.requests[r.rid]
        self.generated += len(outs)
        with self._lock:
            self._starts.append(start)
            self._batch.append(len(outs))
            self._cpu += time.thread_time() - cpu0
        return outs

    @staticmethod
    def _output(r: _Req, delta: list[int], text: str, finish: str | None) -> RequestOutput:
        co = CompletionOutput(0, r.text, list(r.tokens), text, delta, finish_reason=finish)
        return RequestOutput(r.rid, r.prompt, [co], finish is not None, 0, {"arrival": r.arrival})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a model directory (only its tokenizer is read)")
    ap.add_argument("--step-ms", type=float, default=0.0, help="simulated GPU time per step (GIL released)")
    ap.add_argument("--gil-releases", type=int, default=4, help="short GIL releases per step (time.sleep(0))")
    ap.add_argument("--host-ms", type=float, default=0.0,
                    help="engine Python work per step holding the GIL (CPU time, spread between the releases)")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    ap.add_argument("--no-uvloop", action="store_true", help="hide uvloop: uvicorn falls back to asyncio's loop")
    a = ap.parse_args(argv[:cut])
    if a.no_uvloop:
        sys.modules["uvloop"] = None  # type: ignore[assignment]  # import fails -> uvicorn's "auto" picks asyncio
    flags = argv[cut + 1:]                        # `mini-vllm serve` flags

    from mini_vllm import cli
    from mini_vllm.api import app as app_mod
    from mini_vllm.entrypoints import serve as serve_mod
    from mini_vllm.engine.async_engine import AsyncEngine

    holder: dict[str, BenchFakeStepEngine] = {}

    def load_engine(args: EngineArgs) -> AsyncEngine:
        fake = holder["engine"] = BenchFakeStepEngine(args, a.step_ms / 1000, a.gil_releases,
                                                                 a.host_ms / 1000)
        eng = AsyncEngine(fake)  # type: ignore[arg-type]
        eng.start()
        return eng

    real_build = app_mod.build_app

    def build_app(state, *rest):  # the served app plus one bench-only route
        app = real_build(state, *rest)

        @app.get("/bench/stats")
        async def bench_stats() -> dict[str, Any]:
            eng = holder.get("engine")
            return dict(eng.reset_stats() if eng else {}, process_cpu_s=time.process_time())
        return app

    serve_mod.load_engine = load_engine
    app_mod.build_app = build_app
    cli.main(["serve", a.model, *flags])


if __name__ == "__main__":
    main()
