"""Server-sent events framing and the pieces every OpenAI response shares (ids, usage)."""
from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any, AsyncIterator

from mini_vllm.api.errors import APIError

log = logging.getLogger("mini_vllm.api")

DONE = b"data: [DONE]\n\n"


# Characters JSON leaves raw that some SSE clients treat as line breaks (str.splitlines does, and so
# does httpx's aiter_lines): a generated U+2028 would cut a `data:` line in half. Escape them.
_LINE_BREAKERS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def event(payload: dict[str, Any]) -> bytes:
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).translate(_LINE_BREAKERS)
    return b"data: " + text.encode() + b"\n\n"


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
