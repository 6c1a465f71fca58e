"""FastAPI dependencies for the per-app objects: settings, storage, the doorbell, the verify process."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.jobs import Enqueue
from app.settings import Settings
from app.storage import Storage
from app.verify import Verifier


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
