"""API keys and roles. A key is shown once at creation; only its SHA-256 is stored.

Roles (DESIGN.md section 7): admin (models, keys, promotion, everything), operator (submits jobs, sees
only its own), auditor (reads everything, changes nothing). Object lookups answer 404, not 403, for an
object the caller may not know exists.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app import audit
from app.db import new_session
from app.errors import ApiError, not_found
from app.models import ROLES, ApiKey, Job
from app.settings import Settings

KEY_PREFIX = "tk_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, role: str, name: str, actor: str = "cli") -> tuple[ApiKey, str]:
    """A new key row and the key itself (the only time it is known in clear). The caller commits."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name, role=role, key_hash=hash_key(secret))
    session.add(row)
    session.flush()
    audit.record(session, actor, "key.create", f"key:{row.id}", {"name": name, "role": role})
    return row, secret


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


# Keys seen in the last moment, by hash: a dashboard polling every second would otherwise pay one query per
# request for the key. A key revoked in the database stops working within Settings.key_cache_seconds (at
# once in the process that revoked it: app/keys.py drops its entry).
KEY_CACHE_MAX = 10_000  # entries; only accepted keys are cached, so this bounds memory, not attackers
_recent_keys: dict[str, tuple[float, ApiKey]] = {}


def forget_cached(key_hash: str) -> None:
    """Drop a key from this process's cache (it was revoked)."""
    _recent_keys.pop(key_hash, None)


def _digest(authorization: str) -> str:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("send 'Authorization: Bearer <api key>'")
    return hash_key(token.strip())


def recent_key(authorization: str) -> ApiKey | None:
    """The key an `Authorization` header names if this process accepted it a moment ago, else None; no I/O,
    so the event loop may call it (a 401 for a malformed header)."""
    cached = _recent_keys.get(_digest(authorization))
    return cached[1] if cached is not None and cached[0] > time.monotonic() else None


def authenticate(settings: Settings, authorization: str) -> ApiKey:
    """The key an `Authorization: Bearer …` header names, or a 401, looked up in the database (check_key asks
    the cache first).

    Its own short session: the request's session (if any) is not opened for it, so no database connection
    is held for the life of a long request (an event stream, a large upload) just to have checked the key.
    """
    digest = _digest(authorization)
    with new_session(settings) as session:
        key = session.scalars(select(ApiKey).where(ApiKey.key_hash == digest)).first()
        if key is None or key.revoked_at is not None:
            raise _unauthorized("unknown or revoked API key")
        session.expunge(key)  # shared across requests and threads: a plain, detached row
    if settings.key_cache_seconds > 0:
        if len(_recent_keys) >= KEY_CACHE_MAX:
            _recent_keys.clear()
        _recent_keys[digest] = (time.monotonic() + settings.key_cache_seconds, key)
    return key


async def check_key(settings: Settings, authorization: str) -> ApiKey:
    """The key of an `Authorization` header, or a 401: from this process's cache in the event loop, else from
    the database in a worker thread."""
    cached = recent_key(authorization)
    if cached is not None:
        return cached
    return await run_in_threadpool(authenticate, settings, authorization)


async def current_key(request: Request) -> ApiKey:
    """The request's key: the one app.auth_gate checked before the body was read, else checked now."""
    # async: a sync dependency costs a thread-pool hop per request; the rare database lookup takes its own
    checked = getattr(request.state, "api_key", None)
    if isinstance(checked, ApiKey):
        return checked
    return await check_key(request.app.state.settings, request.headers.get("authorization", ""))


CurrentKey = Annotated[ApiKey, Depends(current_key)]


def require_role(*roles: str) -> Callable[[ApiKey], Awaitable[ApiKey]]:
    async def check(key: CurrentKey) -> ApiKey:
        if key.role not in roles:
            raise ApiError(403, "forbidden", f"the {key.role} role may not do this (needs {' or '.join(roles)})")
        return key

    return check


AdminKey = Annotated[ApiKey, Depends(require_role("admin"))]
SubmitterKey = Annotated[ApiKey, Depends(require_role("admin", "operator"))]
ReaderKey = Annotated[ApiKey, Depends(require_role("admin", "auditor"))]


def sees_all(key: ApiKey) -> bool:
    return key.role in ("admin", "auditor")


def visible_job(session: Session, key: ApiKey, job_id: str) -> Job:
    """The job, if this key may see it; otherwise 404 whether or not it exists."""
    job = session.get(Job, job_id)
    if job is None or not (sees_all(key) or job.submitted_by == key.id):
        raise not_found("job", job_id)
    return job
