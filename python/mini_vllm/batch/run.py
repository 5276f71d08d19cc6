"""`mini-vllm batch MODEL --input IN.jsonl --output OUT.jsonl`: offline inference, answers identical to the server's.

Each request goes through the server's own FastAPI app, called in-process over ASGI (no socket):
the same validation, the same completion / chat code, the same error bodies - so a batch result
and the same request sent to `mini-vllm serve` agree (token for token at temperature 0). Requests
run concurrently on one engine, which batches them continuously; `--max-concurrency` bounds how
many are in flight (default: twice --max-num-seqs, under --max-waiting). Results are appended as
they finish (jsonl.py: whole lines, resumable). Progress goes to stderr as
`[batch] D/T done, F failed, S from an earlier run, R req/s` - a bar on a terminal, a line every few
seconds otherwise (what `invoke batch` reads for its own bar, locally and from a Slurm job's output).
Exit 0 when every input line has an output line; a bad line is an error line, not a failed job.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from mini_vllm.batch.jsonl import Appender, BadLine, Request, count_lines, done_keys, failure, read_input, result

log = logging.getLogger("mini_vllm.batch")
RETRY_STATUS = (429,)         # not final: the request is sent again
FATAL_STATUS = (503,)         # the engine is gone: stop, leave the rest for a rerun


def add_batch_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", "-i", required=True, type=Path, help="OpenAI Batch input file (JSONL)")
    p.add_argument("--output", "-o", required=True, type=Path,
                   help="results (JSONL), appended; a rerun skips the custom_ids already there")
    p.add_argument("--max-concurrency", type=int, default=0,
                   help="requests in flight at once (default: 2 x --max-num-seqs, below --max-waiting)")
    p.add_argument("--progress-interval", type=float, default=5.0,
                   help="seconds between progress lines when stderr is not a terminal (default 5)")


async def asgi_post(app: Any, path: str, body: bytes) -> tuple[int, bytes]:
    """POST `body` to `path` of an ASGI app in this process; (status, response body)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
             "client": ("batch", 0), "server": ("batch", 0)}
    finished = asyncio.Event()
    sent = False
    status, chunks = 500, []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()         # the "client" stays until the answer is complete
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                finished.set()

    await app(scope, receive, send)
    finished.set()
    return status, b"".join(chunks)


class Progress:
    """`[batch] D/T done, ...` on stderr: redrawn in place on a terminal, a line every `interval` s otherwise."""

    def __init__(self, total: int, before: int, interval: float, out: TextIO = sys.stderr) -> None:
        self.total, self.before, self.interval, self.out = total, before, interval, out
        self.done = self.failed = self.tokens = 0
        self.start = self.shown = time.monotonic()
        self.tty = out.isatty()

    def add(self, ok: bool, tokens: int = 0) -> None:
        self.done += 1
        self.failed += not ok
        self.tokens += tokens
        now = time.monotonic()
        if self.tty or now - self.shown >= self.interval:
            self.show()
            self.shown = now

    def line(self) -> str:
        secs = max(time.monotonic() - self.start, 1e-9)
        return (f"[batch] {self.before + self.done}/{self.total} done, {self.failed} failed, {self.before} from an "
                f"earlier run, {self.done / secs:.1f} req/s, {self.tokens / secs:.0f} completion tok/s")

    def show(self, final: bool = False) -> None:
        if self.tty:
            width = 30
            filled = int(width * (self.before + self.done) / max(self.total, 1))
            end = "\n" if final else ""
            self.out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.line()[8:]}{end}")
        else:
            self.out.write(self.line() + "\n")
        self.out.flush()


def _tokens(body: Any) -> int:
    usage = body.get("usage") if isinstance(body, dict) else None
    return int((usage or {}).get("completion_tokens") or 0)


async def _one(app: Any, req: Request, out: Appender, progress: Progress, stop: asyncio.Event) -> None:
    payload = json.dumps(req.body).encode()
    while True:
        status, raw = await asgi_post(app, req.url, payload)
        if status not in RETRY_STATUS:
            break
        await asyncio.sleep(0.2)
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = {"error": {"message": raw.decode(errors="replace")[:500], "type": "InternalServerError"}}
    if status in FATAL_STATUS:   # not written: a rerun sends it again
        log.error("line %d: %s; stopping (a rerun resumes)", req.line, (body.get("error") or {}).get("message"))
        stop.set()
        return
    out.write(result(req, status, body))
    progress.add(status == 200, _tokens(body))


async def run(app: Any, items: list[Request | BadLine], out: Appender, progress: Progress, limit: int) -> bool:
    """Send every request (at most `limit` in flight); False when the run stopped early."""
    stop = asyncio.Event()
    slots = asyncio.Semaphore(limit)
    tasks: set[asyncio.Task] = set()

    async def guarded(req: Request) -> None:
        try:
            await _one(app, req, out, progress, stop)
        finally:
            slots.release()

    for item in items:
        if stop.is_set():
            break
        if isinstance(item, BadLine):
            out.write(failure(item))
            progress.add(False)
            continue
        await slots.acquire()
        task = asyncio.create_task(guarded(item))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    return not stop.is_set()


def batch(ns: argparse.Namespace) -> int:
    """The `mini-vllm batch` command; its exit status."""
    from mini_vllm.api import sse
    from mini_vllm.api.app import build_app, load_model
    from mini_vllm.entrypoints.flags import UsageError, check_supported
    from mini_vllm.entrypoints.serve import fail, fetched_engine_args, load_engine, server_state

    try:
        for note in check_supported(ns):
            log.info("%s", note)
    except UsageError as e:
        fail("mini-vllm batch", str(e))
    if not ns.input.is_file():
        print(f"mini-vllm batch: input {ns.input} does not exist or is not a file", file=sys.stderr)
        return 2
    args = fetched_engine_args(ns, "mini-vllm batch")     # a Hugging Face id or s3:// is fetched first
    done = done_keys(ns.output)
    if done.cut:
        log.warning("%s ended in a partial line (%d bytes, a kill mid-write): cut it; that request runs again",
                    ns.output, done.cut)
    total = count_lines(ns.input)
    todo = [item for item in read_input(ns.input) if not done.has(item)]
    before = total - len(todo)
    log.info("batch %s -> %s: %d lines, %d already in the output, %d to run", ns.input, ns.output, total, before,
             len(todo))
    if not todo:
        Progress(total, before, ns.progress_interval).show(final=True)
        return 0
    try:
        state = server_state(ns, args)
    except UsageError as e:
        fail("mini-vllm batch", str(e))
    try:
        load_model(state, lambda: load_engine(args))
    except Exception as e:  # noqa: BLE001 - any load failure: one line, non-zero exit
        print(f"mini-vllm batch: model failed to load from {args.model}: {type(e).__name__}: "
              f"{str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr, flush=True)
        return 1
    state.created = sse.now()
    limit = ns.max_concurrency or max(1, min(2 * args.max_num_seqs, args.max_waiting))
    progress = Progress(total, before, ns.progress_interval)
    out = Appender(ns.output)
    loop = asyncio.new_event_loop()
    main = loop.create_task(run(build_app(state, ns.max_request_bytes), todo, out, progress, limit))
    loop.add_signal_handler(signal.SIGTERM, main.cancel)    # scancel: stop cleanly, keep what is written
    try:
        complete = loop.run_until_complete(main)
    except asyncio.CancelledError:
        complete = None
    finally:
        out.close()
        progress.show(final=True)
        state.engine.shutdown()
        loop.close()
    if complete is None:
        print("mini-vllm batch: stopped by SIGTERM; rerun the same command to resume", file=sys.stderr)
        return 143
    if not complete:
        print("mini-vllm batch: the engine stopped; rerun the same command to resume", file=sys.stderr)
        return 1
    return 0
