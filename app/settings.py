"""The one typed settings object. Every knob of the service is a field here, read from `TAMING_*`.

No other module reads the environment: they take a `Settings` (or call `get_settings()`).
Paths default to places under `var_dir`, so `TAMING_VAR_DIR=/somewhere` alone moves all state.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Configuration of the API, the worker and the command line (environment prefix `TAMING_`)."""

    model_config = SettingsConfigDict(env_prefix="TAMING_", extra="ignore")

    var_dir: Path = Field(default=Path("var"), description="Folder of all local state (database, objects, broker).")
    database_url: str = Field(
        default="", description="SQLAlchemy URL; empty: SQLite at `<var_dir>/taming.db`. "
        "PostgreSQL: `postgresql+psycopg://user@host/db`."
    )
    storage_url: str = Field(
        default="", description="Objects: a folder (empty: `<var_dir>/objects`) or `s3://bucket[/prefix]`."
    )
    s3_endpoint_url: str | None = Field(default=None, description="S3 endpoint (MinIO or another S3-compatible store).")
    s3_region: str = Field(default="us-east-1", description="S3 region name.")
    presign_seconds: int = Field(default=900, ge=1, description="Lifetime of presigned S3 download URLs.")
    broker_url: str = Field(
        default="filesystem://", description="Celery broker: `filesystem://` (under `<var_dir>/broker`) or `redis://…`."
    )
    device: str = Field(default="auto", description="Worker device: `auto` (CUDA if there, else CPU), `cpu`, `cuda:0`.")
    precision: Literal["fp32", "tf32", "bf16"] = Field(
        default="tf32", description="How the worker computes: `fp32` (strict), `tf32` (convolutions on TF32 tensor "
        "cores, CUDA only), `bf16` (as tf32, and the coupling networks in bf16 in gradient passes). Every measured "
        "and reported bpd stays fp32 (README, GPU)."
    )
    channels_last: bool = Field(default=False, description="Worker models in channels-last memory layout (measured "
                                "option).")
    compile: bool = Field(default=False, description="Worker models through `torch.compile` (measured option; the "
                          "first passes of each model pay for compilation).")
    host: str = Field(default="127.0.0.1", description="Address `taming serve` listens on.")
    port: int = Field(default=8000, description="Port `taming serve` listens on.")
    api_url: str = Field(default="http://127.0.0.1:8000", description="Base URL the `taming submit` client talks to.")
    api_key: str | None = Field(default=None, description="API key the `taming submit` client sends.")
    key_cache_seconds: float = Field(
        default=1.0, ge=0, le=60, description="How long an API process trusts a key it has checked; a key revoked "
        "elsewhere stops working within this time (at once in the process that revoked it). 0: no cache."
    )
    max_file_bytes: int = Field(default=10 * 2**20, ge=1, description="Largest accepted image file (bytes).")
    max_files: int = Field(default=200, ge=1, description="Most image files in one job or verify request.")
    max_request_bytes: int = Field(default=200 * 2**20, ge=1, description="Largest request body (bytes).")
    max_model_request_bytes: int = Field(
        default=4 * 2**30, ge=1, description="Largest `POST /v1/models` body: a checkpoint plus its remember set."
    )
    max_remember_bytes: int = Field(
        default=2**30, ge=1, description="Largest remember set sent as one .npz, decompressed (bytes); a zip that "
        "declares more is refused before it is read."
    )
    body_timeout_seconds: float = Field(
        default=30, gt=0, description="Longest wait for the next chunk of a request body before the request is "
        "ended with 408 (a slow-sending client cannot hold a connection and its temp files)."
    )
    max_pixels: int = Field(
        default=4096 * 4096, ge=1, description="Most pixels in one image (more is a decompression bomb)."
    )
    max_queued_jobs_per_key: int = Field(
        default=20, ge=1, description="Most jobs one API key may have queued or running at once; more is 429."
    )
    max_upload_bytes_per_key_per_day: int = Field(
        default=2 * 2**30, ge=1, description="Most bytes of files one API key may upload in jobs over 24 hours; "
        "more is 429."
    )
    convert_timeout_seconds: float = Field(
        default=600, gt=0, description="Longest a rosinality state_dict's conversion may take (then 422)."
    )
    convert_memory_bytes: int = Field(
        default=8 * 2**30, ge=2**30, description="Address space of the conversion's child process (more is 422)."
    )
    checkpoint_every: int = Field(default=20, ge=1, description="Iterations between saves of a job's resumable state.")
    heartbeat_seconds: float = Field(default=5, gt=0, description="How often a running job updates its heartbeat.")
    stale_after_seconds: float = Field(
        default=120, gt=0, description="Heartbeat age after which a running job is re-run."
    )
    max_attempts: int = Field(default=3, ge=1, description="Attempts before a job whose worker keeps dying fails.")
    # at most stale_after_seconds: a dead worker's lease must lapse by the time the sweeper rescues its job
    lease_seconds: float = Field(
        default=60, gt=0, description="Lifetime of a worker's per-model lease (renewed while it runs)."
    )
    sweep_interval_seconds: float = Field(default=30, gt=0, description="How often the sweeper looks for lost jobs.")
    queued_stale_seconds: float = Field(
        default=60, gt=0, description="Age of a queued job nobody picked up before its doorbell is rung again."
    )
    progress_every: int = Field(default=5, ge=1, description="Iterations between progress writes to the job row.")
    callback_timeout_seconds: float = Field(default=5, gt=0, description="Timeout of one webhook delivery POST.")
    webhook_allow: Annotated[list[str], NoDecode] = Field(
        default=[], description="Hosts and CIDRs a `callback_url` may reach although internal (comma-separated), "
        "e.g. `127.0.0.1,10.1.0.0/16,hooks.corp`; everything else internal is refused."
    )
    webhook_max_attempts: int = Field(default=8, ge=1, le=100, description="Deliveries of one webhook before it "
                                      "is given up.")
    webhook_retry_seconds: float = Field(default=5, gt=0, description="Wait before the first webhook retry; "
                                         "each later one waits 3× longer.")
    webhook_retry_max_seconds: float = Field(default=3600, gt=0, description="Longest wait between two webhook "
                                             "deliveries.")
    webhook_poll_seconds: float = Field(default=1, gt=0, description="How often the delivery loop looks for due "
                                        "webhooks.")
    job_time_limit_seconds: int = Field(default=4 * 3600, ge=60, description="Longest a taming run may take.")
    audit_key: str | None = Field(
        default=None, min_length=32, description="Secret key of the audit log's MACs (app/audit_anchor.py); "
        "kept out of the database. Unset: the file `audit_key_file`. Distributed mode: the same on every process."
    )
    audit_key_file: Path | None = Field(
        default=None, description="File holding the audit MAC key (made on first use, mode 0600); empty: "
        "`<var_dir>/audit.key`."
    )
    audit_head_file: Path | None = Field(
        default=None, description="File outside the database where the audit chain's head (last id, hash, MAC) "
        "is kept after every commit, to detect truncation; empty: `<var_dir>/audit.head`."
    )
    require_promotion: bool = Field(
        default=False,
        description="Default for new models: a tamed version becomes current only when an admin promotes it.",
    )
    verify_timeout_seconds: float = Field(
        default=300, gt=0, description="Longest a `POST /v1/verify` may wait and compute (the first on a new "
        "version also measures its remember set)."
    )
    verify_prestart: bool = Field(
        default=True, description="Start the API's warm verify process with the API, not on the first request."
    )

    @field_validator("webhook_allow", mode="before")
    @classmethod
    def _split_allow(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _fill_paths(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.var_dir / 'taming.db'}"
        if not self.storage_url:
            self.storage_url = str(self.var_dir / "objects")
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()


def child_environment(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment for a child process (worker, demo server) that must see exactly these settings."""
    env = dict(os.environ)
    for name, value in settings.model_dump(exclude_none=True).items():
        env[f"TAMING_{name.upper()}"] = ",".join(value) if isinstance(value, list) else str(value)
    env.update(extra)
    return env
