"""The jobs one taming run carries: what the runner claims and the executor and monitor work on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Batch:
    """The jobs one taming run carries."""

    run_id: str
    model_id: str
    job_ids: list[str]
    base_version: int
    attempts: int
    resumed: bool
