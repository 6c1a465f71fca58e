"""FastAPI dependencies for the per-app objects: a database session per request, settings, storage, the doorbell,
the verify process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.db import new_session
from app.jobs import Enqueue
from app.settings import Settings
from app.storage import Storage
from app.verify import Verifier


def _request_session(request: Request) -> Iterator[Session]:
    # Routes commit explicitly (a job must be committed before its doorbell rings); anything left
    # uncommitted when the request ends is rolled back by close().
    session = new_session(request.app.state.settings)
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(_request_session)]


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _storage(request: Request) -> Storage:
    return request.app.state.storage


def _enqueue(request: Request) -> Enqueue:
    return request.app.state.enqueue


def _verifier(request: Request) -> Verifier:
    return request.app.state.verifier


SettingsDep = Annotated[Settings, Depends(_settings)]
StorageDep = Annotated[Storage, Depends(_storage)]
EnqueueDep = Annotated[Enqueue, Depends(_enqueue)]
VerifierDep = Annotated[Verifier, Depends(_verifier)]
