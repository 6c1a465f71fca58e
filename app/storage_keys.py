"""Every storage key the service writes, in one place (docs/CONTRACT.md lists the layout).

Keys are relative paths; `app/storage.py` maps them to a folder (embedded mode) or an S3 bucket.
"""

from __future__ import annotations


def checkpoint_prefix(model_id: str) -> str:
    return f"checkpoints/{model_id}/"


def checkpoint(model_id: str, version: int) -> str:
    return f"{checkpoint_prefix(model_id)}v{version}.safetensors"


def remember_prefix(model_id: str) -> str:
    """Where every remember-set object of a model lives (and nothing else)."""
    return f"remember/{model_id}/"


def uploads_prefix(job_id: str) -> str:
    return f"uploads/{job_id}/"


def upload(job_id: str, field: str, index: int, ext: str) -> str:
    return f"{uploads_prefix(job_id)}{field}/{index:04d}{ext}"


def report(job_id: str, ext: str = ".json") -> str:
    return f"reports/{job_id}{ext}"


def run_prefix(run_id: str) -> str:
    """A taming run's saved files (its resumable state), deleted when the run ends."""
    return f"runs/{run_id}/"


def run_state(run_id: str) -> str:
    return f"{run_prefix(run_id)}state.pt"


def version_stats(model_id: str, version: int) -> str:
    return f"stats/{model_id}/v{version}.json"


def classifier(classifier_id: str) -> str:
    return f"classifiers/{classifier_id}.safetensors"
