"""The OpenAI Batch file format: request lines in, result lines out - and an output file that survives kills.

Input, one JSON object a line: `{"custom_id", "method": "POST", "url": "/v1/completions" |
"/v1/chat/completions", "body": {...}}`. Output, one a line, in completion order:
`{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error": null}` - or, for a
line that could not be sent, `"response": null, "error": {"code", "message"}`. A 4xx from the API is
a response (as OpenAI's batch reports it), not an error.

Resuming: a rerun reads the output first and skips every request whose `custom_id` is already there
(and every bad line whose `id`, `batch_req_<input line>`, is). Each result is one `write()` of a whole line
to a file opened O_APPEND; a kill between writes leaves only whole lines, and the one way to get a
partial line - killed inside a write of a line longer than a page - is repaired by the next run,
which cuts the file back to its last newline before reading it (and so reruns that request).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

URLS = ("/v1/completions", "/v1/chat/completions")


@dataclass(frozen=True)
class Request:
    line: int
    custom_id: str
    url: str
    body: dict[str, Any]

    @property
    def id(self) -> str:
        return line_id(self.line)


@dataclass(frozen=True)
class BadLine:
    line: int
    custom_id: str | None
    message: str

    @property
    def id(self) -> str:
        return line_id(self.line)


def line_id(line: int) -> str:
    return f"batch_req_{line}"


def parse(line: int, text: str) -> Request | BadLine:
    """One input line, checked; what is wrong with it is said in words a user can act on."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return BadLine(line, None, f"line {line}: not valid JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(obj, dict):
        return BadLine(line, None, f"line {line}: expected a JSON object, got {type(obj).__name__}")
    cid = obj.get("custom_id")
    if not isinstance(cid, str) or not cid:
        return BadLine(line, None, f"line {line}: custom_id must be a non-empty string")
    method, url, body = obj.get("method", "POST"), obj.get("url"), obj.get("body")
    if method != "POST":
        return BadLine(line, cid, f"line {line}: method must be POST, got {method!r}")
    if url not in URLS:
        return BadLine(line, cid, f"line {line}: url must be one of {', '.join(URLS)}, got {url!r}")
    if not isinstance(body, dict):
        return BadLine(line, cid, f"line {line}: body must be a JSON object (the request to {url})")
    if body.get("stream"):
        return BadLine(line, cid, f"line {line}: body.stream is not supported in a batch (remove it)")
    return Request(line, cid, url, body)


def read_input(path: Path) -> Iterator[Request | BadLine]:
    """Every non-blank line of the input, parsed; a custom_id seen before becomes a BadLine."""
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, text in enumerate(f, 1):
            if not text.strip():
                continue
            item = parse(n, text)
            if isinstance(item, Request):
                first = seen.setdefault(item.custom_id, n)
                if first != n:
                    item = BadLine(n, item.custom_id, f"line {n}: duplicate custom_id {item.custom_id!r} "
                                                      f"(first on line {first}); custom_ids must be unique")
            yield item


def count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for text in f if text.strip())


def result(req: Request, status: int, body: Any) -> dict[str, Any]:
    request_id = body.get("id", "") if isinstance(body, dict) else ""
    return {"id": req.id, "custom_id": req.custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": body}, "error": None}


def failure(item: BadLine) -> dict[str, Any]:
    return {"id": item.id, "custom_id": item.custom_id, "response": None,
            "error": {"code": "invalid_request", "message": item.message}}


@dataclass
class Done:
    """What an earlier run already wrote: its custom_ids and ids, and the bytes cut from a torn last line."""
    custom_ids: set[str]
    ids: set[str]
    cut: int = 0

    def has(self, item: Request | BadLine) -> bool:
        """A request is done when its custom_id is in the output; a bad line when its line's id is (its
        custom_id may be a duplicate's, or missing)."""
        return item.custom_id in self.custom_ids if isinstance(item, Request) else item.id in self.ids


def done_keys(path: Path) -> Done:
    """Read (and, after a kill mid-line, repair) the output of an earlier run."""
    done = Done(set(), set())
    if not path.exists():
        return done
    with open(path, "rb+") as f:
        data = f.read()
        keep = data.rfind(b"\n") + 1        # a last line without its newline was cut short by a kill
        if keep < len(data):
            f.truncate(keep)
    for text in data[:keep].splitlines():
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("custom_id"), str):
            done.custom_ids.add(obj["custom_id"])
        if isinstance(obj, dict) and isinstance(obj.get("id"), str):
            done.ids.add(obj["id"])
    done.cut = len(data) - keep
    return done


class Appender:
    """Whole lines appended with one write() each; fsync every `sync_s` and on close."""

    def __init__(self, path: Path, sync_s: float = 2.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.sync_s, self.synced = sync_s, time.monotonic()

    def write(self, obj: dict[str, Any]) -> None:
        data = (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        while data:
            data = data[os.write(self.fd, data):]
        if time.monotonic() - self.synced > self.sync_s:
            os.fsync(self.fd)
            self.synced = time.monotonic()

    def close(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)
