"""FastAPI dependencies for the per-app objects: a database session per request, settings, storage, the doorbell,
the verify process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.db import new_read_session, new_session
from app.jobs import Enqueue
from app.settings import Settings
from app.storage import Storage
from app.verify import Verifier


async def _request_session(request: Request) -> AsyncIterator[Session]:
    # Routes commit explicitly (a job must be committed before its doorbell rings); anything left
    # uncommitted when the request ends is rolled back by close(). Every dependency here is async: a sync
    # one costs a thread-pool hop per request (two for a generator), which halved the poll throughput.
    # A new session does no I/O until first used; closing one that holds a connection talks to the
    # database, so that happens in the thread pool.
    session = new_session(request.app.state.settings)
    try:
        yield session
    finally:
        if session.in_transaction():
            await run_in_threadpool(session.close)
        else:
            session.close()


async def _read_session(request: Request) -> AsyncIterator[Session]:
    # the hot read paths (a job polled every second): one round trip per query, no transaction to end
    session = new_read_session(request.app.state.settings)
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(_request_session)]
ReadSessionDep = Annotated[Session, Depends(_read_session)]


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _storage(request: Request) -> Storage:
    return request.app.state.storage


async def _enqueue(request: Request) -> Enqueue:
    return request.app.state.enqueue


async def _verifier(request: Request) -> Verifier:
    return request.app.state.verifier


SettingsDep = Annotated[Settings, Depends(_settings)]
StorageDep = Annotated[Storage, Depends(_storage)]
EnqueueDep = Annotated[Enqueue, Depends(_enqueue)]
VerifierDep = Annotated[Verifier, Depends(_verifier)]
