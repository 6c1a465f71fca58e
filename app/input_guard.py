"""Inputs no endpoint can take, refused at the edge (an ASGI middleware) with the one error shape.

A NUL byte in the path or the query string (`%00`) would reach the database, which PostgreSQL refuses in
text with an error, not an answer: such a request gets a 422 before any route runs. Form fields carry the
same rule in their own declarations (app/schemas.py TEXT_PATTERN), where the OpenAPI schema shows it.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import error_response


def has_nul(scope: Scope) -> str | None:
    """Which part of the request line carries a NUL byte ("path" or "query"), or None."""
    if "\x00" in scope.get("path", "") or b"%00" in scope.get("raw_path", b"") or b"\x00" in scope.get(
            "raw_path", b""):
        return "path"
    query = scope.get("query_string", b"")
    if b"\x00" in query or b"\x00" in unquote_to_bytes(query):
        return "query"
    return None


class InputGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (where := has_nul(scope)) is not None:
            response = error_response(422, "invalid_request", f"the request {where} contains a NUL byte",
                                      {"where": where})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
