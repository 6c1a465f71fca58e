"""A job's states and kinds: the one definition the API, the worker and the CI client read (torch-free).

StrEnum members compare and serialise as their strings, so the database columns and the JSON stay plain text.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobKind(StrEnum):
    FORGET = "forget_identity"
    REBALANCE = "rebalance_attribute"


JOB_STATES = tuple(JobState)
TERMINAL_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)
JOB_KINDS = tuple(JobKind)
