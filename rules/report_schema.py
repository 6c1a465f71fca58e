"""The JSON Schema of the audit report (DESIGN.md section 8), schema version 1.0: the names scripts rely on.

One document for the library that writes reports (taming/report.py), the service that adds its sections and writes
the reports of jobs that failed early (app/job_reports.py), and anyone who reads them: `GET /v1/reports/schema`
publishes it and `docs/report.schema.json` is a copy (`python -m rules.report_schema --write`). The tests
validate real reports against it. Sections may carry more than it names (`additionalProperties` is open), so
adding a figure is no schema change; renaming or retyping a name here is, and bumps `SCHEMA_VERSION`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

SCHEMA_VERSION = "1.0"
SETS = ("forget", "forget_holdout", "remember", "remember_unseen", "remember_nearest")
DOC = Path(__file__).resolve().parents[1] / "docs" / "report.schema.json"

_NUMBER = {"type": ["number", "null"]}  # JSON has no NaN: a non-finite value is written as null
_BEFORE_AFTER = {"type": "object", "properties": {"before": _NUMBER, "after": _NUMBER}}
_FORGET_ITEM = {
    "type": "object",
    "required": ["sha256", "bpd_before", "bpd_after", "quantile_before", "quantile_after", "d", "excluded", "reason"],
    "properties": {
        "sha256": {"type": ["string", "null"]}, "bpd_before": _NUMBER, "bpd_after": _NUMBER,
        "quantile_before": _NUMBER, "quantile_after": _NUMBER, "d": _NUMBER, "excluded": {"type": "boolean"},
        "reason": {"type": ["string", "null"]},
    },
}
_PER_SET = {"type": "object", "propertyNames": {"enum": [*SETS, "remember_holdout"]}}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://taming-service.example/report.schema.json",
    "title": "taming-service audit report",
    "type": "object",
    "required": ["schema_version", "job", "model", "parameters", "stopping", "metrics", "history", "timing"],
    # an erasure's report lists every forget image; a rebalance's names the share instead
    "if": {"properties": {"job": {"properties": {"kind": {"const": "rebalance_attribute"}}, "required": ["kind"]}}},
    "then": {"properties": {"metrics": {"required": ["attribute_share"]}}},
    "else": {"required": ["inputs"], "properties": {"stopping": {"required": ["max_abs_d"]}}},
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "job": {"type": "object", "properties": {"id": {"type": ["string", "null"]},
                                                 "kind": {"type": ["string", "null"]},
                                                 "subject_ref": {"type": ["string", "null"]},
                                                 "audit_head": {"type": "object", "required": ["id", "hash"]}}},
        "model": {"type": "object"},
        "parameters": {"type": "object"},
        "inputs": {"type": "object", "required": ["forget"],
                   "properties": {"forget": {"type": "array", "items": _FORGET_ITEM}}},
        "stopping": {"type": "object", "required": ["criterion_met", "iterations", "reason"],
                     "properties": {"criterion_met": {"type": "boolean"}, "iterations": {"type": "integer"},
                                    "max_abs_d": _NUMBER, "reason": {"type": ["string", "null"]}}},
        "metrics": {"type": "object", "properties": {
            "quantile_drop": {**_PER_SET, "additionalProperties": _NUMBER},
            "mean_quantile": {**_PER_SET, "additionalProperties": _BEFORE_AFTER},
            "bpd_shift_sigma": {**_PER_SET, "additionalProperties": _NUMBER},
            "bpd_remember": _BEFORE_AFTER,
            "attribute_share": {"type": "object", "properties": {"before": _NUMBER, "after": _NUMBER,
                                                                  "target": _NUMBER}},
        }},
        "history": {"type": "array", "items": {"type": "object"}},
        "timing": {"type": "object", "required": ["wall_seconds"], "properties": {"wall_seconds": _NUMBER}},
        "software": {"type": "object"},
        "outcome": {"type": "object", "required": ["state", "error", "phase", "version"],
                    "properties": {"state": {"type": "string"}, "error": {"type": ["string", "null"]},
                                   "phase": {"type": ["string", "null"]}, "version": {"type": ["integer", "null"]}}},
    },
}


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
