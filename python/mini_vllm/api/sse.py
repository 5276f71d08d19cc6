"""Server-sent events framing and the pieces every OpenAI response shares (ids, usage)."""
from __future__ import annotations

import json
import logging
import time
import uuid
from json.encoder import encode_basestring  # type: ignore[attr-defined]  # C-accelerated
from typing import Any, AsyncIterator

from mini_vllm.api.errors import APIError

log = logging.getLogger("mini_vllm.api")

DONE = b"data: [DONE]\n\n"


# Characters JSON leaves raw that some SSE clients treat as line breaks (str.splitlines does, and so
# does httpx's aiter_lines): a generated U+2028 would cut a `data:` line in half. Escape them.
_LINE_BREAKERS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})
# one encoder for every event: json.dumps(..., separators=...) would build a new one per call
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
encode = _ENCODER.encode


def _frame(text: str) -> bytes:
    if "\u2028" in text or "\u2029" in text or "\x85" in text:      # rare: translate only when needed
        text = text.translate(_LINE_BREAKERS)
    return b"data: " + text.encode() + b"\n\n"


def event(payload: dict[str, Any]) -> bytes:
    return _frame(encode(payload))


def scalar(value: str | int | None) -> str:
    """JSON for a finish/stop reason (None, a string or a token id), without the general encoder."""
    if value is None:
        return "null"
    return encode_basestring(value) if isinstance(value, str) else encode(value)


class Chunks:
    """A streamed response's events: `head` (id, object, created, model) is encoded once, and each
    event is that prefix + the choices' JSON. Byte for byte what event(dict(head, choices=...)) writes,
    at a fraction of the cost (hundreds of streams each send an event per token)."""

    def __init__(self, head: dict[str, Any]) -> None:
        whole = encode(dict(head, choices=[]))
        self._prefix = whole[:-2]                                   # ...,"choices":[

    def event(self, choices: list[str]) -> bytes:
        """One event from already-encoded choice objects (see text_choice, or encode(dict))."""
        return _frame(self._prefix + ",".join(choices) + "]}")

    @staticmethod
    def text_choice(index: int, text: str, finish_reason: str | None, stop_reason: str | int | None) -> str:
        """A text_completion choice without logprobs: {"index","text","logprobs":null,"finish_reason","stop_reason"}."""
        return (f'{{"index":{index},"text":{encode_basestring(text)},"logprobs":null,'
                f'"finish_reason":{scalar(finish_reason)},"stop_reason":{scalar(stop_reason)}}}')


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int, cached: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                           "total_tokens": prompt_tokens + completion_tokens}
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


async def guarded(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A stream's events, then `[DONE]`; a failure mid-stream becomes an error event for this client
    only (the status line is already sent), never a dropped connection or a dead server."""
    try:
        async for chunk in events:
            yield chunk
    except APIError as e:
        yield event(e.body())
    except Exception as e:  # noqa: BLE001 - one request's failure must not leak further
        log.exception("stream failed")
        yield event(APIError(500, f"internal error: {type(e).__name__}: {e}").body())
    yield DONE
