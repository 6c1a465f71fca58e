"""The admin dashboard (`/dashboard`, a page and its static files) and `GET /v1/whoami`, which it signs in with.

The page holds no data of its own: its scripts call the JSON API with the key the user typed, kept in the
tab's sessionStorage and sent in the Authorization header, never in a URL. A strict Content-Security-Policy
allows scripts from this origin only, so nothing injected into a job's fields can run.
"""

from __future__ import annotations

import re
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel

from app.auth import CurrentKey
from app.errors import ERROR_RESPONSES, not_found

router = APIRouter()
STATIC_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,40}\.(js|css|svg)$")
MEDIA_TYPES = {"js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8", "svg": "image/svg+xml"}
CSP = ("default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' data: blob:; "
       "style-src 'self' 'unsafe-inline'; frame-src 'self' blob:; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-cache"}


class WhoAmI(BaseModel):
    id: str
    name: str
    role: str


@router.get("/v1/whoami", response_model=WhoAmI, tags=["keys"], responses=ERROR_RESPONSES)
def whoami(key: CurrentKey) -> WhoAmI:
    """The API key this request was made with: its id, name and role."""
    return WhoAmI(id=key.id, name=key.name, role=key.role)


@router.get("/dashboard", response_class=HTMLResponse, tags=["dashboard"])
def dashboard() -> HTMLResponse:
    """The admin page: jobs with live progress and GDPR due dates, reports, models, the audit log."""
    page = resources.files("app").joinpath("templates/dashboard.html").read_text()
    return HTMLResponse(page, headers=HEADERS)


@router.get("/dashboard/static/{name}", response_class=Response, tags=["dashboard"], include_in_schema=False)
def static_file(name: str) -> Response:
    """The dashboard's scripts and style sheet (only files of app/static, by plain name)."""
    match = STATIC_NAME.match(name)
    item = resources.files("app").joinpath("static", name)
    if match is None or not item.is_file():
        raise not_found("file", name)
    return Response(item.read_bytes(), media_type=MEDIA_TYPES[match.group(1)], headers=HEADERS)
