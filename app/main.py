"""The FastAPI application: `create_app(settings)`; uvicorn runs `app.main:create_app --factory`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from PIL import Image

from app import errors, events, jobs, migrate
from app.auth_gate import AuthGate
from app.db import new_session
from app.input_guard import InputGuard
from app.limits import BodyLimit
from app.metrics import Metrics
from app.routes import audit as audit_routes
from app.routes import classifiers as classifier_routes
from app.routes import dashboard as dashboard_routes
from app.routes import jobs as job_routes
from app.routes import keys as key_routes
from app.routes import models as model_routes
from app.routes import ops as ops_routes
from app.routes import webhooks as webhook_routes
from app.settings import Settings, get_settings
from app.storage import S3Storage, get_storage
from app.verify import Verifier

log = logging.getLogger(__name__)
DESCRIPTION = """Make a normalizing flow forget a person, or rebalance an attribute, and prove it with an
audit report. Authenticate with `Authorization: Bearer <api key>`. Every error is
`{"error": {"code", "message", "details"}}`."""


def broker_check(settings: Settings) -> Callable[[], None]:
    """A probe that raises when the broker cannot be reached."""

    def probe() -> None:
        if settings.broker_url.startswith("filesystem://"):
            folder = settings.var_dir / "broker"
            folder.mkdir(parents=True, exist_ok=True)
            if not Path(folder).is_dir():
                raise RuntimeError(f"{folder} missing")
            return
        from kombu import Connection

        with Connection(settings.broker_url, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)

    return probe


def _on_start(app: FastAPI) -> None:
    settings: Settings = app.state.settings
    migrate.upgrade(settings)
    if isinstance(app.state.storage, S3Storage):
        app.state.storage.ensure_bucket()
    # The row is the truth: ring again for every job still queued, in case a doorbell was lost while
    # the API was down (a duplicate message is a no-op for the worker).
    with new_session(settings) as session:
        for job_id in jobs.queued_job_ids(session):
            jobs.ring(app.state.enqueue, job_id)


def create_app(settings: Settings | None = None, enqueue: jobs.Enqueue | None = None) -> FastAPI:
    settings = settings or get_settings()
    Image.MAX_IMAGE_PIXELS = settings.max_pixels  # Pillow's own bomb guard, at our cap

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _on_start(app)
        if settings.verify_prestart:
            app.state.verifier.start()  # torch loads in the child while the API serves
        try:
            yield
        finally:
            app.state.verifier.close()

    app = FastAPI(title="taming", version="1", description=DESCRIPTION, lifespan=lifespan,
                  form_limits={"max_files": settings.max_files * 50 + 10})
    app.state.settings = settings
    app.state.storage = get_storage(settings)
    app.state.enqueue = enqueue or jobs.default_enqueue
    app.state.broker_check = broker_check(settings)
    app.state.verifier = Verifier(settings)
    app.state.snapshots = events.Snapshots(settings)  # the job rows event streams share
    errors.install(app)
    # outermost last: metrics see everything; NUL bytes and missing keys are refused before the body is read
    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(AuthGate, settings=settings, router=app.router)
    app.add_middleware(InputGuard)
    app.add_middleware(Metrics)
    for router in (job_routes.router, model_routes.router, ops_routes.router, audit_routes.router,
                   dashboard_routes.router, webhook_routes.router, key_routes.router,
                   classifier_routes.router):
        app.include_router(router)
    return app
