"""The remember statistics (μ_R, σ_R) of one model version, kept in the object store beside its checkpoint.

`stats/{model_id}/v{n}.json` holds what `POST /v1/verify` needs to place a version's threshold, so that
every verify process (and every API machine) computes them at most once per version. A taming job writes
them for the version it creates, from its report's evaluation (its remember set, without the people it
forgot: the numbers the report's quantiles used); the verify process computes them on the model's
reference remember set for a version that has none (the base version, or a rebalanced one). Torch-free.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from app import storage_keys
from app.storage import Storage

SOURCES = ("run", "reference_set")


def key(model_id: str, version: int) -> str:
    return storage_keys.version_stats(model_id, version)


def write(storage: Storage, model_id: str, version: int, sha256: str, stats: dict[str, Any], source: str) -> None:
    """Store μ_R, σ_R (`stats`: mu, sigma, n, draws, seed) for the version whose checkpoint has `sha256`."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}")
    body: dict[str, Any] = {"sha256": sha256, "source": source, "created_at": datetime.now(UTC).isoformat(),
                            "mu": float(stats["mu"]), "sigma": float(stats["sigma"]), "n": int(stats["n"]),
                            "draws": int(stats.get("draws", 5)), "seed": int(stats.get("seed", 0))}
    storage.put_bytes(key(model_id, version), json.dumps(body, indent=2).encode())


def read(storage: Storage, model_id: str, version: int, sha256: str) -> dict[str, Any] | None:
    """The stored statistics of this version, or None (none stored, unreadable, or for another checkpoint)."""
    try:
        body = json.loads(storage.get_bytes(key(model_id, version)))
    except (KeyError, ValueError):
        return None
    if not isinstance(body, dict) or body.get("sha256") != sha256 or not {"mu", "sigma", "n"} <= set(body):
        return None
    return body


def from_report(report: dict[str, Any]) -> dict[str, Any] | None:
    """μ_R, σ_R under the tamed model as the report's evaluation measured them, if it says so."""
    reference = (report.get("metrics") or {}).get("reference_stats", {}).get("remember", {}).get("tamed")
    if not isinstance(reference, dict) or not {"mu", "sigma", "n"} <= set(reference):
        return None
    return dict(reference)
