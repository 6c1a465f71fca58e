"""Request body caps, enforced before and while the body streams in (an ASGI middleware).

The declared Content-Length is checked first, so an honest oversize upload is refused before a byte is
read; the bytes are also counted as they arrive, so a lying or chunked one is cut off at the cap. A client
that stops sending mid-body is cut off too: each chunk must arrive within `body_timeout_seconds` (408).
"""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_response
from app.settings import Settings


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


class BodyTimeout(HTTPException):
    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"the request body did not arrive in time (no data for {seconds:g} s)")


class BodyLimit:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    def limit_for(self, scope: Scope) -> int:
        if scope["method"] == "POST" and scope["path"].rstrip("/") == "/v1/models":
            return self.settings.max_model_request_bytes
        return self.settings.max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            response = error_response(413, "request_too_large", f"request body larger than {limit} bytes",
                                      {"limit": limit, "content_length": int(declared)})
            await response(scope, receive, send)
            return
        seen, body_done = 0, False
        timeout = self.settings.body_timeout_seconds

        async def counted() -> Message:
            nonlocal seen, body_done
            if body_done:  # after the body, receive() waits for a disconnect (a long event stream): no timeout
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except TimeoutError:
                raise BodyTimeout(timeout) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
                body_done = not message.get("more_body", False)
            return message

        await self.app(scope, counted, send)
