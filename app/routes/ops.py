"""Verify, health, readiness and metrics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text

from app import metrics, verify
from app.auth import CurrentKey
from app.db import SessionDep
from app.deps import SettingsDep, StorageDep
from app.errors import ERROR_RESPONSES
from app.schemas import Health

router = APIRouter()


@router.post("/v1/verify", tags=["verify"], responses=ERROR_RESPONSES)
def verify_images(
    _key: CurrentKey, session: SessionDep, settings: SettingsDep, storage: StorageDep,
    model_id: Annotated[str, Form(max_length=64)],
    images: Annotated[list[UploadFile], File()],
    version: Annotated[int | None, Form(ge=1)] = None,
) -> dict[str, Any]:
    """Likelihood quantiles of images under a model version ("is this person forgotten?")."""
    return verify.verify(session, storage, settings, model_id, version, images)


@router.get("/healthz", response_model=Health, tags=["ops"])
def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, tags=["ops"], responses={503: {"model": Health}})
def readyz(request: Request, session: SessionDep, storage: StorageDep) -> Response:
    """Database, object storage and broker all reachable (503 naming what is not)."""
    checks = {"database": _check(lambda: session.execute(text("SELECT 1"))),
              "storage": _check(storage.check),
              "broker": _check(request.app.state.broker_check)}
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse(Health(status="ok" if ok else "unavailable", checks=checks).model_dump(),
                        status_code=200 if ok else 503)


def _check(probe: Any) -> str:
    try:
        probe()
        return "ok"
    except Exception as exc:
        return f"error: {exc.__class__.__name__}: {str(exc)[:200]}"


@router.get("/metrics", tags=["ops"], response_class=Response)
def prometheus(session: SessionDep) -> Response:
    """Prometheus metrics: requests by route and status, latency, jobs by state."""
    body, content_type = metrics.render(session)
    return Response(body, media_type=content_type)

