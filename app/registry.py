"""Models and their versions: registering a base model, and promoting a version to current.

Version 1 is the uploaded base checkpoint; every later version comes from a job (the worker adds it).
Promotion may move the current version backwards, but moving back past a version an erasure produced
would bring a forgotten person back: that needs `force` and a reason, and is audited. It serves the older
checkpoint only: the person's photos stay deleted and later jobs still read the newest remember-set
revision (app/revisions.py).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import BinaryIO

from fastapi import UploadFile
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import audit, lineage, remember_npz, revisions, storage_keys, uploads
from app.checkpoints import CheckpointInfo, CheckpointProblem, convert_rosinality, looks_like_safetensors, read_header
from app.errors import ApiError, not_found
from app.models import ApiKey, Model, ModelVersion, new_id
from app.schemas import PromoteRequest
from app.settings import Settings
from app.storage import Storage


def _checkpoint_problem(exc: CheckpointProblem) -> ApiError:
    return ApiError(422, "invalid_checkpoint", str(exc))


def open_checkpoint(checkpoint: UploadFile, args: UploadFile | None, workdir: Path,
                    settings: Settings) -> tuple[BinaryIO, CheckpointInfo]:
    """The safetensors file to store and what its header says; converts a rosinality state_dict first."""
    src: BinaryIO = checkpoint.file
    src.seek(0)
    if not looks_like_safetensors(src.read(16)):
        if args is None:
            raise ApiError(422, "invalid_checkpoint", "checkpoint is not a taming-glow/1 safetensors file; "
                           "for a rosinality state_dict send its args.json as 'args'")
        state, args_path, out = workdir / "state.pt", workdir / "args.json", workdir / "converted.safetensors"
        for upload, path in ((checkpoint, state), (args, args_path)):
            upload.file.seek(0)
            path.write_bytes(upload.file.read())
        try:
            convert_rosinality(state, args_path, out, settings.convert_timeout_seconds, settings.convert_memory_bytes)
        except CheckpointProblem as exc:
            raise _checkpoint_problem(exc) from None
        src = out.open("rb")
    try:
        return src, read_header(src, uploads.file_size(src))
    except CheckpointProblem as exc:
        raise _checkpoint_problem(exc) from None


def _remember_items(remember: list[UploadFile], info: CheckpointInfo, settings: Settings,
                    field: str = "remember") -> list[tuple[str, UploadFile]]:
    """(storage name, upload) for a remember set (`field`): one .npz, or images that fit the model."""
    if not remember:
        raise ApiError(422, "no_images", "a model needs a reference remember set ('remember' images or one .npz)")
    first = remember[0]
    first.file.seek(0)
    if len(remember) == 1 and first.file.read(4) == b"PK\x03\x04":
        remember_npz.check_npz(first.file, info.image_size, info.channels, settings.max_remember_bytes, field)
        return [(f"{field}.npz", first)]
    groups = {field: remember}
    incoming = uploads.inspect_all(groups, uploads.hash_all(groups), info.image_size, info.channels, settings)
    return [(f"{item.index:05d}{item.info.ext}", item.upload) for item in incoming]


def register(session: Session, storage: Storage, settings: Settings, key: ApiKey, name: str,
             checkpoint: UploadFile, args: UploadFile | None, remember: list[UploadFile],
             require_promotion: bool | None, remember_holdout: list[UploadFile] | None = None) -> Model:
    """Check everything, store checkpoint and remember sets, then commit the model with version 1.

    remember_holdout: optional held-out photos of the remembered people, the reference against which the
    reports measure held-out photos (DESIGN.md section 4, "Evaluation"), stored beside the remember set.
    """
    name = name.strip()
    if not name:
        raise ApiError(422, "invalid_request", "name must not be empty")
    if session.scalars(select(Model.id).where(Model.name == name)).first():
        raise ApiError(409, "model_name_taken", f"a model named {name!r} exists")
    model_id = new_id()
    with tempfile.TemporaryDirectory(prefix="taming-upload-") as tmp:
        src, info = open_checkpoint(checkpoint, args, Path(tmp), settings)
        items = _remember_items(remember, info, settings)
        held = _remember_items(remember_holdout, info, settings, "remember_holdout") if remember_holdout else []
        sha = uploads.sha256_of(src)
        try:
            storage.put_file(storage_keys.checkpoint(model_id, 1), src)
            objects = [revisions.put_registered(storage, model_id, revisions.REMEMBER, file_name, upload.file)
                       for file_name, upload in items]
            objects += [revisions.put_registered(storage, model_id, revisions.REMEMBER_HOLDOUT, f"holdout/{file_name}",
                                                 upload.file) for file_name, upload in held]
            model = _insert(session, key, model_id, name, info, sha, require_promotion, settings, bool(held))
            revisions.first_revision(session, model_id, objects)
            session.commit()
        except BaseException:
            session.rollback()
            storage.delete_prefix(storage_keys.checkpoint_prefix(model_id))
            storage.delete_prefix(storage_keys.remember_prefix(model_id))
            raise
    return model


def _insert(session: Session, key: ApiKey, model_id: str, name: str, info: CheckpointInfo, sha: str,
            require_promotion: bool | None, settings: Settings, has_holdout: bool = False) -> Model:
    model = Model(id=model_id, name=name, current_version=1, remember_prefix=storage_keys.remember_prefix(model_id),
                  remember_holdout_prefix=revisions.registered_key(model_id, "holdout/") if has_holdout else None,
                  image_size=info.image_size, channels=info.channels, n_bits=info.n_bits, created_by=key.id,
                  require_promotion=settings.require_promotion if require_promotion is None else require_promotion)
    session.add(model)
    session.flush()
    session.add(ModelVersion(model_id=model_id, version=1, parent=None, job_id=None, sha256=sha, promoted=True,
                             checkpoint_key=storage_keys.checkpoint(model_id, 1), remember_revision=1))
    audit.record(session, key.id, "model.register", f"model:{model_id}",
                 {"name": name, "sha256": sha, "image_size": info.image_size, "channels": info.channels})
    return model


def get_model(session: Session, model_id: str) -> Model:
    model = session.get(Model, model_id)
    if model is None:
        raise not_found("model", model_id)
    return model


def get_version(session: Session, model_id: str, version: int) -> ModelVersion:
    row = session.scalars(select(ModelVersion).where(ModelVersion.model_id == model_id,
                                                     ModelVersion.version == version)).first()
    if row is None:
        raise not_found("version", f"{model_id}/v{version}")
    return row


def versions(session: Session, model_id: str) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).where(ModelVersion.model_id == model_id)
                                .order_by(ModelVersion.version)))


def erasures_between(session: Session, model_id: str, low: int, high: int) -> list[dict[str, object]]:
    """Erasures that took effect in versions (low, high], every request of a coalesced run included."""
    return [{"version": e.version, "job_id": e.job_id, "subject_ref": e.subject_ref}
            for e in lineage.erasures(session, model_id, low, high)]


def promote(session: Session, key: ApiKey, model: Model, version: int, req: PromoteRequest) -> Model:
    """Make `version` current (audited); promoting the current, already promoted version changes nothing."""
    target = get_version(session, model.id, version)
    if version == model.current_version and target.promoted:
        return model  # a no-op adds no audit row
    undone = erasures_between(session, model.id, version, model.current_version)
    if undone and not (req.force and (req.reason or "").strip()):
        raise ApiError(409, "erasure_rollback", f"version {version} predates {len(undone)} erasure(s); "
                       "promoting it needs force=true and a reason (their photos are not restored)", undone)
    previous = model.current_version
    model.current_version = version
    target.promoted = True
    audit.record(session, key.id, "model.promote", f"model:{model.id}",
                 {"from": previous, "to": version, "force": req.force, "reason": req.reason,
                  "erasures_undone": undone, "photos_restored": False,
                  "remember_revision": revisions.live_number(session, model.id)})
    session.commit()
    return model
