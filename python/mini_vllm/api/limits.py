"""A cap on request body size, enforced while the body arrives (HTTP 413, OpenAI-shaped).

Without it a client can make the server buffer any amount (a 16 MB body was read whole before
pydantic saw it). A declared Content-Length over the cap is refused before a byte of the body is read;
a chunked body is counted as it streams and refused at the first chunk past the cap.
"""
from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mini_vllm.api.errors import error_body

DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024   # a 128k-token prompt as token ids is ~1 MB of JSON


def _too_large(limit: int) -> str:
    return f"request body is larger than the server's limit of {limit} bytes (--max-request-bytes)"


class BodyLimitMiddleware:
    """Pure ASGI: no cost to responses; the body's receive() is wrapped only to count bytes."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            resp = JSONResponse(error_body(413, _too_large(self.max_bytes), "body", "request_too_large"), 413,
                                headers={"connection": "close"})
            await resp(scope, receive, send)
            return
        seen = 0

        async def counted() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:   # FastAPI re-raises HTTPException from body reading: a 413
                    raise StarletteHTTPException(413, _too_large(self.max_bytes))
            return message

        await self.app(scope, counted, send)
