"""The API key is checked before the body is read (an ASGI middleware in front of every `/v1/` route).

FastAPI resolves a route's form and file parameters, spooling the whole multipart body to temp files, before
its dependencies run: without this gate anyone without a key could make the server take in gigabytes before
hearing 401. The gate answers 401 from the headers alone; a key it accepted goes to the route in the request
state (app.auth.current_key reads it there), so roles are still checked per route.
"""

from __future__ import annotations

from starlette.routing import Match, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from app.auth import check_key
from app.errors import ApiError, error_response
from app.settings import Settings

PROTECTED = "/v1/"  # every route under it needs a key


class AuthGate:
    def __init__(self, app: ASGIApp, settings: Settings, router: Router) -> None:
        self.app = app
        self.settings = settings
        self.router = router

    def _guards(self, scope: Scope) -> bool:
        """Whether a route under /v1/ takes this request (else the router answers 404 or 405 as usual)."""
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED):
            return False
        return any(route.matches(scope)[0] == Match.FULL for route in self.router.routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._guards(scope):
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope["headers"] if k == b"authorization"), b"").decode("latin-1")
        try:
            key = await check_key(self.settings, header)
        except ApiError as exc:
            response = error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)
            await response(scope, receive, send)  # the body is never read
            return
        scope.setdefault("state", {})["api_key"] = key
        await self.app(scope, receive, send)
