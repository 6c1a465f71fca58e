"""Request and response bodies of the HTTP API (their field names are the contract of DESIGN.md §7)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.gdpr import due_date
from app.models import Job, Model, ModelVersion


class JobParameters(BaseModel):
    """The `parameters` JSON of `POST /v1/jobs`; omitted fields take the paper's defaults."""

    model_config = ConfigDict(extra="forbid")

    delta: float = Field(default=4.0, description="Threshold δ in σ_R units above μ_R (negative: raise likelihood).")
    epsilon: float | None = Field(default=None, gt=0, description="Tolerance ε on |d|; default 0.15·|δ|.")
    alpha: float = Field(default=0.6, ge=0, le=1, description="Weight of the forget loss.")
    gamma: float = Field(default=0.6, ge=0, le=1, description="Weight of the KL term in the remember loss.")
    max_iterations: int = Field(default=800, ge=1, le=100_000)
    target_share: float | None = Field(default=None, ge=0, le=1, description="Rebalance: the attribute's target share.")
    direction: Literal["decrease", "increase"] = "decrease"
    lr: float = Field(default=5e-5, gt=0, le=1)
    seed: int = 0
    forget_loss: Literal["paper", "scale_free"] = "paper"

    @model_validator(mode="after")
    def _defaults(self) -> JobParameters:
        if self.delta == 0:
            raise ValueError("delta must not be 0")
        if self.epsilon is None:
            self.epsilon = round(0.15 * abs(self.delta), 10)
        return self


class Progress(BaseModel):
    model_config = ConfigDict(extra="allow")

    iteration: int = 0
    max_iterations: int | None = None
    max_abs_d: float | None = None
    share: float | None = None
    eta_seconds: float | None = None


class UploadOut(BaseModel):
    field: str
    name: str
    sha256: str
    excluded_reason: str | None = None


class JobOut(BaseModel):
    id: str
    kind: str
    state: str
    model_id: str
    subject_ref: str
    progress: Progress
    attempts: int
    version: int | None
    base_version: int | None
    error: str | None
    cancel_requested: bool
    parameters: dict[str, Any]
    uploads: list[UploadOut]
    submitted_by: str
    callback_url: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    due_at: datetime | None = Field(default=None, description="GDPR deadline of an erasure: submission + 1 month.")

    @classmethod
    def of(cls, job: Job) -> JobOut:
        progress = dict(job.progress or {})
        progress.setdefault("max_iterations", (job.parameters or {}).get("max_iterations"))
        return cls(
            id=job.id, kind=job.kind, state=job.state, model_id=job.model_id, subject_ref=job.subject_ref,
            progress=Progress(**progress), attempts=job.attempts, version=job.version,
            base_version=job.base_version, error=job.error, cancel_requested=job.cancel_requested,
            parameters=job.parameters or {}, uploads=[UploadOut(**u) for u in job.uploads or []],
            submitted_by=job.submitted_by, callback_url=job.callback_url, created_at=job.created_at,
            started_at=job.started_at, finished_at=job.finished_at,
            due_at=due_date(job.created_at) if job.kind == "forget_identity" and job.created_at else None,
        )


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class ModelOut(BaseModel):
    id: str
    name: str
    current_version: int
    image_size: int
    channels: int
    n_bits: int
    require_promotion: bool
    created_at: datetime

    @classmethod
    def of(cls, model: Model) -> ModelOut:
        return cls(id=model.id, name=model.name, current_version=model.current_version,
                   image_size=model.image_size, channels=model.channels, n_bits=model.n_bits,
                   require_promotion=model.require_promotion, created_at=model.created_at)


class ModelList(BaseModel):
    items: list[ModelOut]
    next_cursor: str | None = None


class ErasureOut(BaseModel):
    """An erasure a version carries: the job, the caller's ticket, the version it took effect in, when."""

    job_id: str
    subject_ref: str
    version: int
    erased_at: datetime | None


class VersionOut(BaseModel):
    version: int
    parent: int | None
    job_id: str | None
    sha256: str
    created_at: datetime
    promoted: bool
    remember_revision: int | None = Field(default=None, description="The remember-set revision it was tamed with.")
    erasures: list[ErasureOut] = Field(default_factory=list, description="Every erasure this version carries.")

    @classmethod
    def of(cls, v: ModelVersion, erasures: list[ErasureOut] | None = None) -> VersionOut:
        return cls(version=v.version, parent=v.parent, job_id=v.job_id, sha256=v.sha256, created_at=v.created_at,
                   promoted=v.promoted, remember_revision=v.remember_revision, erasures=erasures or [])


class VersionList(BaseModel):
    items: list[VersionOut]
    next_cursor: str | None = None


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    force: bool = Field(default=False, description="Needed to move back past a version made by an erasure.")
    reason: str | None = Field(default=None, max_length=2000, description="Why (required with force; audited).")


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}
