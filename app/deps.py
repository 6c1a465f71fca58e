"""FastAPI dependencies for the per-app objects: a database session per request, settings, storage, the doorbell,
the verify process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.db import new_read_session, new_session
from app.jobs import Enqueue
from app.settings import Settings
from app.storage import Storage
from app.verify import Verifier


def _session_per_request(open_session: Callable[[Settings], Session]) -> Callable[[Request], Iterator[Session]]:
    # Routes commit explicitly (a job must be committed before its doorbell rings); anything left
    # uncommitted when the request ends is rolled back by close(). A sync generator on purpose: FastAPI runs
    # its exit in a thread of its own, outside the pool the endpoints share. An async one that closed in that
    # pool deadlocked under 100 event streams (every thread waiting for a connection that only a close
    # waiting for a thread would return).
    def dependency(request: Request) -> Iterator[Session]:
        session = open_session(request.app.state.settings)
        try:
            yield session
        finally:
            session.close()

    return dependency


SessionDep = Annotated[Session, Depends(_session_per_request(new_session))]
# the hot read paths (a job polled every second): one round trip per query, no transaction to end
ReadSessionDep = Annotated[Session, Depends(_session_per_request(new_read_session))]


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
