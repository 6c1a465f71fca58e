"""/v1/models: register a base model, read models and versions, download checkpoints, promote."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Body, File, Form, Query, UploadFile
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import select

from app import lineage, registry
from app.auth import AdminKey, CurrentKey, ReaderKey
from app.deps import SessionDep, SettingsDep, StorageDep
from app.errors import BODY_RESPONSES, CONFLICT_RESPONSES, ERROR_RESPONSES
from app.models import Model
from app.schemas import TEXT_PATTERN, ModelList, ModelOut, PromoteRequest, VersionList, VersionOut, VersionPath
from app.storage import LocalStorage

router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERROR_RESPONSES)


@router.post("", status_code=201, response_model=ModelOut, responses={**BODY_RESPONSES, **CONFLICT_RESPONSES})
def register_model(
    key: AdminKey, session: SessionDep, settings: SettingsDep, storage: StorageDep,
    name: Annotated[str, Form(min_length=1, max_length=200, pattern=TEXT_PATTERN)],
    checkpoint: Annotated[UploadFile, File(description="taming-glow/1 safetensors, or a rosinality state_dict")],
    remember: Annotated[list[UploadFile], File(description="reference remember set: images or one .npz")],
    args: Annotated[UploadFile | None, File(description="args.json of a rosinality state_dict")] = None,
    require_promotion: Annotated[bool | None, Form()] = None,
    remember_holdout: Annotated[list[UploadFile] | None, File(
        description="optional held-out photos of the remembered people (images or one .npz): the reports "
        "measure held-out photos against these")] = None,
) -> ModelOut:
    """Register a base model (version 1) with its reference remember set (admin)."""
    model = registry.register(session, storage, settings, key, name, checkpoint, args, remember, require_promotion,
                              remember_holdout)
    return ModelOut.of(model)


@router.get("", response_model=ModelList)
def list_models(_key: CurrentKey, session: SessionDep) -> ModelList:
    """Every model with its current version."""
    return ModelList(items=[ModelOut.of(m) for m in session.scalars(select(Model).order_by(Model.created_at))])


@router.get("/{model_id}", response_model=ModelOut)
def get_model(model_id: str, _key: CurrentKey, session: SessionDep) -> ModelOut:
    """One model."""
    return ModelOut.of(registry.get_model(session, model_id))


@router.get("/{model_id}/versions", response_model=VersionList)
def list_versions(model_id: str, _key: CurrentKey, session: SessionDep) -> VersionList:
    """The model's versions, oldest first (each names its parent and the job that made it)."""
    registry.get_model(session, model_id)
    return VersionList(items=lineage.version_views(session, model_id, registry.versions(session, model_id)))


@router.get("/{model_id}/versions/{version}", response_model=VersionOut)
def get_version(model_id: str, version: VersionPath, _key: CurrentKey, session: SessionDep) -> VersionOut:
    """One version's lineage: parent version, job, checkpoint SHA-256, and the erasures it carries."""
    return lineage.version_views(session, model_id, [registry.get_version(session, model_id, version)])[0]


@router.get("/{model_id}/versions/{version}/checkpoint", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}, 307: {"description": "presigned URL"}})
def download_checkpoint(model_id: str, version: VersionPath, _key: ReaderKey, session: SessionDep,
                        storage: StorageDep, link: Annotated[bool, Query(description=(
                            "Answer `{\"url\"}` (the presigned URL on S3, else null) instead of redirecting: "
                            "for a browser, which cannot follow a redirect to another origin"))] = False) -> Response:
    """Download the checkpoint (a redirect to a presigned URL when objects live on S3)."""
    row = registry.get_version(session, model_id, version)
    url = storage.presigned_url(row.checkpoint_key)
    if link:
        return JSONResponse({"url": url})
    if url is not None:
        return RedirectResponse(url, status_code=307)
    assert isinstance(storage, LocalStorage)
    path: Path = storage.path(row.checkpoint_key)
    return FileResponse(path, media_type="application/octet-stream", filename=f"{model_id}-v{version}.safetensors")


@router.post("/{model_id}/versions/{version}:promote", response_model=ModelOut,
             responses={**BODY_RESPONSES, **CONFLICT_RESPONSES})
def promote_version(model_id: str, version: VersionPath, key: AdminKey, session: SessionDep,
                    req: Annotated[PromoteRequest | None, Body()] = None) -> ModelOut:
    """Make a version current (admin); going back past an erasure needs force and a reason."""
    model = registry.promote(session, key, registry.get_model(session, model_id), version, req or PromoteRequest())
    return ModelOut.of(model)
