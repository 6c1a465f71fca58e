"""The audit report (DESIGN.md section 8), schema version 1.0: its typed sections and the JSON Schema made from them.

One definition for the library that writes reports (taming/report.py, taming/rebalance_report.py), the service
that adds its sections and writes the reports of jobs that failed early (app/job_reports.py), and anyone who reads
them: `Report.model_validate(json)` gives typed access to a stored report, `GET /v1/reports/schema` publishes
SCHEMA and `docs/report.schema.json` is a copy (`python -m rules.report_schema --write`). The tests validate real
reports against it. Sections may carry more than they name (`extra="allow"`), so adding a figure is no schema
change; renaming or retyping a field here is, and bumps `SCHEMA_VERSION`. `metrics` stays a mapping: its sections
differ between erasures and rebalancing, and the schema names the ones scripts rely on.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = "1.0"
SETS = ("forget", "forget_holdout", "remember", "remember_unseen", "remember_nearest")
DOC = Path(__file__).resolve().parents[1] / "docs" / "report.schema.json"


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow")


class ForgetItem(_Section):
    """One uploaded forget image: its likelihood before and after, its final d, and why it was left out, if it was.
    A number is None (JSON null) where it was not measured or is not finite."""

    sha256: str | None
    bpd_before: float | None
    bpd_after: float | None
    quantile_before: float | None
    quantile_after: float | None
    d: float | None
    excluded: bool
    reason: str | None
    name: str | None = None  # the uploaded file's name


class Inputs(_Section):
    forget: list[ForgetItem]
    holdout: list[dict[str, Any]] = []  # the held-out photos' sha256


class Stopping(_Section):
    """How the run ended: the confirmed verdict, its iterations, the largest |d| of the included forget images."""

    criterion_met: bool
    iterations: int
    max_abs_d: float | None = None
    reason: str | None
    epsilon: float | None = None  # the tolerance on d (None: the paper's rule of δ)
    estimator: str | None = None  # of the certifying bpd: "mean" or "discrete"
    draws: int | None = None  # dequantization draws of the confirmation


class Timing(_Section):
    wall_seconds: float | None
    tame_seconds: float | None = None
    confirm_seconds: float | None = None  # of tame_seconds
    confirmations: int | None = None  # stops measured on fresh statistics, the confirmed one included
    screened: int | None = None  # of them, refused on the forget images alone (taming.confirm)
    stages: dict[str, float] = {}  # seconds per stage of the run
    iterations_per_second: float | None = None
    device: str | None = None
    precision: str | None = None


class Outcome(_Section):
    """How the job ended (the service adds it): its state, error, the phase it ended in, the version it made."""

    state: str
    error: str | None
    phase: str | None
    version: int | None


class Report(_Section):
    """The whole report. `as_json()` is what is stored and served."""

    schema_version: Literal["1.0"] = "1.0"  # SCHEMA_VERSION
    job: dict[str, Any]
    model: dict[str, Any]
    parameters: dict[str, Any]
    inputs: Inputs | None = Field(default=None, description="absent from a rebalance's report")
    stopping: Stopping
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    timing: Timing
    software: dict[str, Any] | None = None
    outcome: Outcome | None = None
    classifier: dict[str, Any] | None = None  # a rebalance's: the classifier that measured the share
    progress: dict[str, Any] | None = None  # a job that failed before measuring: its last progress

    def as_json(self) -> dict[str, Any]:
        """Plain JSON values (numpy and torch numbers in the open sections too); absent optional sections left out."""
        data = jsonable(self.model_dump())
        return {k: v for k, v in data.items() if v is not None or k not in _OPTIONAL}


_OPTIONAL = ("inputs", "software", "outcome", "classifier", "progress")


def jsonable(value: Any) -> Any:
    """Plain JSON values: numpy/torch scalars and arrays to Python numbers and lists, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, str):  # numpy arrays/scalars, torch tensors
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


_NUMBER = {"type": ["number", "null"]}  # JSON has no NaN: a non-finite value is written as null
_BEFORE_AFTER = {"type": "object", "properties": {"before": _NUMBER, "after": _NUMBER}}
_PER_SET = {"type": "object", "propertyNames": {"enum": [*SETS, "remember_holdout"]}}
# the metrics sections scripts rely on (the mapping may hold more)
_METRICS = {"type": "object", "properties": {
    "quantile_drop": {**_PER_SET, "additionalProperties": _NUMBER},
    "mean_quantile": {**_PER_SET, "additionalProperties": _BEFORE_AFTER},
    "bpd_shift_sigma": {**_PER_SET, "additionalProperties": _NUMBER},
    "bpd_remember": _BEFORE_AFTER,
    "attribute_share": {"type": "object", "properties": {"before": _NUMBER, "after": _NUMBER, "target": _NUMBER}},
}}


def _schema() -> dict[str, Any]:
    schema = Report.model_json_schema()
    schema["required"] = ["schema_version", *schema["required"]]  # defaulted in Python, always written
    schema["properties"]["metrics"] = _METRICS
    schema["properties"]["job"] = {"type": "object", "properties": {
        "audit_head": {"type": "object", "required": ["id", "hash"]}}}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://taming-service.example/report.schema.json",
        **{k: v for k, v in schema.items() if k != "title"},
        "title": "taming-service audit report",
        # an erasure's report lists every forget image; a rebalance's names the share instead
        "if": {"properties": {"job": {"properties": {"kind": {"const": "rebalance_attribute"}},
                                      "required": ["kind"]}}},
        "then": {"properties": {"metrics": {"required": ["attribute_share"]}}},
        "else": {"required": ["inputs"], "properties": {"inputs": {"type": "object"},
                                                        "stopping": {"required": ["max_abs_d"]}}},
    }


SCHEMA: dict[str, Any] = _schema()


def document() -> str:
    """The schema as the published file holds it."""
    return json.dumps(SCHEMA, indent=2) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="Print the report's JSON Schema, or --write it to docs/.")
    parser.add_argument("--write", action="store_true", help=f"write {DOC.name} under docs/")
    if parser.parse_args().write:
        DOC.write_text(document())
    else:
        print(document(), end="")


if __name__ == "__main__":
    main()
