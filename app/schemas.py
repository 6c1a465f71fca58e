"""Request and response bodies of the HTTP API (their field names are the contract of DESIGN.md §7)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, cast

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.gdpr import due_date
from app.models import TERMINAL_STATES, Classifier, Job, Model, ModelVersion
from rules.method import DEFAULT_METHOD, knobs

# The names of rules/method.py METHODS (a test checks they agree).
MethodName = Literal["paper", "discrete", "converge", "specific", "improved"]


# Text fields of forms: no NUL byte (PostgreSQL cannot store one in text; it would be an error, not an answer).
TEXT_PATTERN = r"^[^\x00]*$"
# Version numbers in paths and forms: the database's integer column.
MAX_VERSION = 2**31 - 1

VersionPath = Annotated[int, Path(ge=1, le=MAX_VERSION, description="A version number of the model (1 is the base).")]

# Bounds of every job parameter: finite numbers only (NaN and ±Infinity are refused), in ranges a run can use.
DELTA_LIMIT = 100.0  # |δ| in σ_R units; the verify endpoint takes the same range
EPSILON_LIMIT = 100.0
SEED_MAX = 2**32 - 1  # every generator takes it, and OpenAPI (whose bounds are floats) states it exactly


def _finite(description: str, *, ge: float | None = None, gt: float | None = None, le: float | None = None) -> Any:
    """An optional float field that must be finite and within the bounds given."""
    return Field(default=None, allow_inf_nan=False, description=description, ge=ge, gt=gt, le=le)


class JobParameters(BaseModel):
    """The `parameters` JSON of `POST /v1/jobs`; an omitted field takes its method's value (rules/method.py), and
    the job row keeps every value the run will use. Every number must be finite and within its stated range."""

    model_config = ConfigDict(extra="forbid")

    method: MethodName = Field(default=cast(MethodName, DEFAULT_METHOD),
                               description="The taming method (README, 'The method, measured'); 'paper' is the "
                               "paper's Algorithm 1.")
    delta: float | None = _finite("Threshold δ in σ_R units above μ_R (negative: raise likelihood; not 0); "
                                  "default 4.", ge=-DELTA_LIMIT, le=DELTA_LIMIT)
    epsilon: float | None = _finite("Tolerance ε on |d|; default 0.15·|δ|.", gt=0, le=EPSILON_LIMIT)
    alpha: float | None = _finite("Weight of the forget loss.", ge=0, le=1)
    gamma: float | None = _finite("Weight of the KL term in the remember loss.", ge=0, le=1)
    max_iterations: int | None = Field(default=None, ge=1, le=100_000)
    target_share: float | None = _finite("Rebalance: the attribute's target share.", ge=0, le=1)
    direction: Literal["decrease", "increase"] = "decrease"
    strategy: Literal["push_negatives", "pull_positives"] = Field(
        default="push_negatives", description="Rebalance, increase: push the images without the attribute down, or "
        "pull those with it up (δ < 0).")
    classifier_id: str | None = Field(default=None, max_length=64, description="Rebalance: a stored classifier "
                                      "(POST /v1/classifiers); without one the job trains its own.")
    lr: float | None = _finite("Learning rate.", gt=0, le=1)
    seed: int = Field(default=0, ge=0, le=SEED_MAX, description="Seed of the run's random draws.")
    forget_loss: Literal["paper", "scale_free"] | None = None

    @model_validator(mode="after")
    def _defaults(self) -> JobParameters:
        method = knobs(self.method)
        for name in ("delta", "alpha", "gamma", "max_iterations", "lr", "forget_loss"):
            if getattr(self, name) is None:
                setattr(self, name, method[name])
        if self.delta == 0:
            raise ValueError("delta must not be 0")
        if self.epsilon is None:
            self.epsilon = round(0.15 * abs(float(self.delta or 0)), 10)
        return self


PHASES = ("queued", "loading", "features", "taming", "confirming", "evaluating", "reporting", "done")


class Progress(BaseModel):
    """Where a job is: its phase at all times, the taming loop's figures, and ETAs that say what they are."""

    model_config = ConfigDict(extra="allow")

    iteration: int = 0
    max_iterations: int | None = Field(default=None, description="The iteration cap; once done, the final iteration "
                                       "(the cap is then in iteration_cap).")
    max_abs_d: float | None = None
    share: float | None = None
    phase: str = Field(default="queued", description=" → ".join(PHASES))
    phase_started_at: str | None = None
    phase_seconds: dict[str, float] = Field(default_factory=dict, description="Seconds spent in each phase so far.")
    done: bool = Field(default=False, description="The job has ended (its state says how).")
    eta_seconds: float | None = Field(
        default=None, description="Estimated seconds left in the current phase; null when there is no estimate. "
        "eta_basis says how it was estimated.")
    eta_basis: str | None = None
    eta_cap_seconds: float | None = Field(
        default=None, description="Taming only: seconds to the iteration cap at the current pace, an upper bound.")
    iterations_per_second: float | None = None

    @classmethod
    def of(cls, job: Job) -> Progress:
        progress = dict(job.progress or {})
        progress.setdefault("max_iterations", (job.parameters or {}).get("max_iterations"))
        # the row may predate a phase (claimed, not yet loading; ended by the API or the sweeper)
        progress["done"] = job.state in TERMINAL_STATES
        if progress["done"]:
            progress["phase"] = "done"
        else:
            progress.setdefault("phase", "queued" if job.state == "queued" else "loading")
        return cls(**progress)


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
        return cls(
            id=job.id, kind=job.kind, state=job.state, model_id=job.model_id, subject_ref=job.subject_ref,
            progress=Progress.of(job), attempts=job.attempts, version=job.version,
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
    remember_holdout: bool = Field(description="Held-out remember photos were given (the held-out sets' reference).")
    created_at: datetime

    @classmethod
    def of(cls, model: Model) -> ModelOut:
        return cls(id=model.id, name=model.name, current_version=model.current_version,
                   image_size=model.image_size, channels=model.channels, n_bits=model.n_bits,
                   require_promotion=model.require_promotion,
                   remember_holdout=model.remember_holdout_prefix is not None, created_at=model.created_at)


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


class VerifyImage(BaseModel):
    name: str
    sha256: str
    excluded_reason: str | None = Field(description="Why the image carries no identity; such images are not counted.")
    bpd: float = Field(description="Bits per dimension, averaged over 5 dequantization draws.")
    quantile: float = Field(description="Likelihood quantile 1 − Φ((bpd − μ_R)/σ_R); small means unusual.")
    d: float = Field(description="(bpd − threshold) / σ_R.")
    reached: bool = Field(description="At or past the threshold: d ≥ −ε (δ < 0: d ≤ ε).")
    counted: bool = Field(description="Part of the set's verdict.")


class RememberStatsOut(BaseModel):
    mu: float = Field(description="μ_R: mean bpd of the remember images under this version.")
    sigma: float = Field(description="σ_R: their standard deviation.")
    n: int = Field(description="Remember images measured.")
    draws: int
    source: Literal["run", "reference_set"] = Field(
        description="run: measured by the job that made this version, on its remember set without the people it "
        "forgot (the report's reference); reference_set: measured on the model's whole reference remember set.")


class VerifyOut(BaseModel):
    """`POST /v1/verify`: each image against the version's threshold, and the verdict for the set."""

    model_id: str
    version: int
    sha256: str = Field(description="SHA-256 of the version's checkpoint.")
    delta: float
    epsilon: float
    threshold: float = Field(description="t = μ_R + δ·σ_R, in bpd.")
    remember: RememberStatsOut
    images: list[VerifyImage]
    reached: bool = Field(description="The verdict: every counted image at or past the threshold.")
    counted: int = Field(description="Images that count towards the verdict (those that carry an identity).")
    summary: str
    seconds: float = Field(description="Time the likelihood computation took.")


class ClassifierOut(BaseModel):
    """A stored attribute classifier and its by-person figures (grouped cross-validation)."""

    id: str
    name: str
    sha256: str
    accuracy: float = Field(description="By-person accuracy: no person on both sides of a cross-validation split.")
    sensitivity: float
    specificity: float
    usable: bool = Field(description="accuracy >= 0.75: what a rebalance job needs.")
    details: dict[str, Any]
    created_at: datetime

    @classmethod
    def of(cls, row: Classifier) -> ClassifierOut:
        return cls(id=row.id, name=row.name, sha256=row.sha256, accuracy=row.accuracy, sensitivity=row.sensitivity,
                   specificity=row.specificity, usable=row.accuracy >= 0.75, details=row.details or {},
                   created_at=row.created_at)


class ClassifierList(BaseModel):
    items: list[ClassifierOut]
