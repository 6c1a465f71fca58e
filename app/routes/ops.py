"""Verify, health, readiness and metrics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text

from app import metrics, verify
from app.auth import CurrentKey
from app.deps import SessionDep, SettingsDep, StorageDep, VerifierDep
from app.errors import BODY_RESPONSES, ERROR_RESPONSES
from app.schemas import MAX_VERSION, TEXT_PATTERN, Health, VerifyOut
from rules import report_schema as report_schema_rule

router = APIRouter()


@router.post("/v1/verify", response_model=VerifyOut, tags=["verify"], responses={**ERROR_RESPONSES, **BODY_RESPONSES})
def verify_images(
    _key: CurrentKey, session: SessionDep, settings: SettingsDep, storage: StorageDep, verifier: VerifierDep,
    model_id: Annotated[str, Form(max_length=64, pattern=TEXT_PATTERN)],
    images: Annotated[list[UploadFile], File()],
    version: Annotated[int | None, Form(ge=1, le=MAX_VERSION,
                                        description="default: the model's current version")] = None,
    delta: Annotated[float, Form(ge=-100, le=100, allow_inf_nan=False,
                                 description="threshold t = μ_R + δ·σ_R (not 0)")] = 4.0,
    epsilon: Annotated[float | None, Form(gt=0, le=100, allow_inf_nan=False,
                                          description="tolerance on d; default 0.15·|δ|")] = None,
) -> VerifyOut:
    """Each image's likelihood quantile and distance to the version's threshold, and the verdict for the set."""
    return verify.verify(session, storage, settings, verifier, model_id, version, images, delta, epsilon)


@router.get("/v1/reports/schema", tags=["jobs"])
def report_schema() -> dict[str, Any]:
    """The JSON Schema of every job's report (`GET /v1/jobs/{id}/report`)."""
    return report_schema_rule.SCHEMA


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

