"""/v1/classifiers: store an attribute classifier for rebalance jobs, read them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from sqlalchemy import select

from app import classifiers
from app.auth import CurrentKey, SubmitterKey
from app.deps import SessionDep, SettingsDep, StorageDep
from app.errors import BODY_RESPONSES, ERROR_RESPONSES
from app.models import Classifier
from app.schemas import ClassifierList, ClassifierOut

router = APIRouter(prefix="/v1/classifiers", tags=["classifiers"], responses=ERROR_RESPONSES)


@router.post("", status_code=201, response_model=ClassifierOut, responses=BODY_RESPONSES)
def create_classifier(
    key: SubmitterKey, session: SessionDep, settings: SettingsDep, storage: StorageDep,
    name: Annotated[str, Form(min_length=1, max_length=200)],
    classifier: Annotated[UploadFile, File(description="safetensors from `taming classifier train`")],
) -> ClassifierOut:
    """Store a classifier; 422 when its by-person accuracy is below 75% or it was never measured."""
    return ClassifierOut.of(classifiers.store(session, storage, key, name, classifier, settings.max_file_bytes))


@router.get("", response_model=ClassifierList)
def list_classifiers(_key: CurrentKey, session: SessionDep) -> ClassifierList:
    """Every stored classifier, oldest first."""
    return ClassifierList(items=[ClassifierOut.of(c) for c in session.scalars(select(Classifier)
                                                                              .order_by(Classifier.created_at))])


@router.get("/{classifier_id}", response_model=ClassifierOut)
def get_classifier(classifier_id: str, _key: CurrentKey, session: SessionDep) -> ClassifierOut:
    """One stored classifier and its measured figures."""
    return ClassifierOut.of(classifiers.get(session, classifier_id))
