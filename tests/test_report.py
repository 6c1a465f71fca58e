"""The audit report: DESIGN.md section 8 names, JSON safety, the HTML page and its figures."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import numpy as np
import pytest
import torch

from rules.report_schema import SCHEMA_VERSION, ForgetItem, Inputs, Report, Stopping, Timing
from taming.report import build_report, make_figures, render_html

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _forget_item(i: int, excluded: bool = False) -> ForgetItem:
    return ForgetItem(**{
        "sha256": f"{i:064x}",
        "bpd_before": 3.1,
        "bpd_after": 4.2,
        "quantile_before": 0.31,
        "quantile_after": 3.1e-5,
        "d": 0.05,
        "excluded": excluded,
        "reason": "nearly black image (mean level 3.0 of 255)" if excluded else None,
    })


def _typed(subject_ref: str = "ticket-42") -> Report:
    sets = ("forget", "forget_holdout", "remember", "remember_unseen", "remember_nearest")
    return build_report(
        job={
            "id": "job-1",
            "kind": "forget_identity",
            "subject_ref": subject_ref,
            "submitted_by": "op",
            "created_at": "2024-01-01T00:00:00Z",
            "started_at": None,
            "finished_at": None,
        },
        model={"id": "m1", "parent_version": 1, "parent_sha256": "a" * 64, "version": 2, "sha256": "b" * 64},
        parameters={
            "delta": 4.0,
            "epsilon": 0.6,
            "alpha": 0.6,
            "gamma": 0.6,
            "lr": 5e-5,
            "batch_forget": 8,
            "batch_remember": 8,
            "max_iterations": 800,
            "seed": 0,
        },
        inputs=Inputs(forget=[_forget_item(0), _forget_item(1, excluded=True)]),
        stopping=Stopping(criterion_met=True, iterations=np.int64(87), max_abs_d=0.41, reason="confirmed"),
        metrics={
            "quantile_drop": {s: 0.3 if s == "forget" else 0.001 for s in sets},
            "mean_quantile": {s: {"before": 0.5, "after": 0.49} for s in sets},
            "bpd_shift_sigma": {s: 0.1 for s in (*sets, "remember_holdout")},
            "bpd_remember": {"before": np.float32(3.0), "after": 3.01},
            "ks_normality": {"statistic": 0.05, "p_value": float("nan")},
            "frechet_distance": {"feature_space": "identity-cnn-64", "before": 1.0, "after": 1.1},
        },
        history=[
            {"iteration": i, "max_abs_d": 4.0 - i / 30, "epsilon": 0.6, "mu_r": 3.0, "sigma_r": 0.1}
            for i in range(0, 90, 10)
        ],
        timing=Timing(wall_seconds=12.5, iterations_per_second=7.0, device="cpu"),
    )


def _report(subject_ref: str = "ticket-42") -> dict[str, Any]:
    return _typed(subject_ref).as_json()


def test_report_has_every_design_name() -> None:
    report = _report()
    assert report["schema_version"] == SCHEMA_VERSION
    for key in ("job", "model", "parameters", "inputs", "stopping", "metrics", "history", "timing", "software"):
        assert key in report
    assert report["stopping"]["criterion_met"] is True and report["stopping"]["iterations"] == 87
    assert set(report["inputs"]["forget"][0]) >= {
        "sha256",
        "bpd_before",
        "bpd_after",
        "quantile_before",
        "quantile_after",
        "d",
        "excluded",
        "reason",
    }
    metrics = report["metrics"]
    for name in ("quantile_drop", "mean_quantile", "bpd_shift_sigma", "bpd_remember", "ks_normality"):
        assert name in metrics
    assert set(metrics["frechet_distance"]) == {"feature_space", "before", "after"}
    assert "wall_seconds" in report["timing"]
    assert {"version", "torch"} <= set(report["software"])
    # strict JSON: numpy scalars converted, NaN written as null
    text = json.dumps(report, allow_nan=False)
    assert json.loads(text)["metrics"]["ks_normality"]["p_value"] is None


def test_report_validates_against_the_published_schema() -> None:
    import jsonschema

    from rules import report_schema

    jsonschema.validate(_report(), report_schema.SCHEMA)
    assert report_schema.DOC.read_text() == report_schema.document(), "run: python -m rules.report_schema --write"
    broken = _report()
    broken["stopping"]["iterations"] = "87"
    with pytest.raises(jsonschema.ValidationError, match="integer"):
        jsonschema.validate(broken, report_schema.SCHEMA)


def test_report_rejects_missing_names() -> None:
    with pytest.raises(ValueError, match="criterion_met"):
        Stopping(iterations=1, reason=None)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="sha256"):
        Inputs(forget=[{"d": 1.0}])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="iterations"):
        Stopping(criterion_met=True, iterations="many", reason=None)  # type: ignore[arg-type]


def test_a_stored_report_reads_back_typed() -> None:
    stored = json.loads(json.dumps(_report()))
    again = Report.model_validate(stored)
    assert again.stopping.iterations == 87 and again.inputs is not None and len(again.inputs.forget) == 2
    assert again.inputs.forget[1].excluded and again.timing.device == "cpu"
    assert again.as_json() == stored


@pytest.fixture(scope="module")
def figures() -> dict[str, bytes]:
    gen = torch.Generator().manual_seed(0)
    samples = torch.rand(16, 1, 16, 16, generator=gen) - 0.5
    return make_figures(
        samples_before=samples,
        samples_after=samples.flip(-1),
        remember_bpd_before=torch.randn(100, generator=gen) * 0.1 + 3.0,
        remember_bpd_after=torch.randn(100, generator=gen) * 0.1 + 3.01,
        forget_bpd_before=np.array([3.0, 3.1, 2.9]),
        forget_bpd_after=np.array([3.4, 3.42, 3.39]),
        threshold=3.4,
        history=[{"iteration": i, "max_abs_d": 4.0 - i / 30, "epsilon": 0.6} for i in range(0, 90, 10)],
    )


def test_figures_are_small_pngs(figures: dict[str, bytes]) -> None:
    assert set(figures) == {"samples", "nll_histogram", "max_abs_d"}
    for png in figures.values():
        assert png.startswith(PNG_MAGIC) and len(png) < 300_000


def test_figures_without_history_skip_the_curve() -> None:
    samples = torch.zeros(4, 3, 8, 8)
    out = make_figures(
        samples_before=samples,
        samples_after=samples,
        remember_bpd_before=[1.0, 1.0],
        remember_bpd_after=[1.0, 1.0],
        forget_bpd_before=[1.0],
        forget_bpd_after=[1.0],
        threshold=1.0,
        history=[],
    )
    assert set(out) == {"samples", "nll_histogram"}


def test_html_inlines_figures_and_escapes_text(figures: dict[str, bytes]) -> None:
    page = render_html(_typed(subject_ref="<script>alert(1)</script>"), figures)
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("data:image/png;base64,") == len(figures)
    uri = page.split("data:image/png;base64,")[1].split('"')[0]
    assert base64.b64decode(uri).startswith(PNG_MAGIC)
    assert "criterion is met" in page
    # the verdict states the target quantile 1 - Phi(delta) for delta = 4
    assert f"{0.5 * math.erfc(4 / math.sqrt(2)):.2e}" in page
    assert "nearly black image" in page  # the excluded image's reason is shown
    assert "http://" not in page and "https://" not in page  # no external assets


def test_html_of_an_unmet_criterion() -> None:
    report = _typed()
    report.stopping.criterion_met = False
    assert "Not certified" in render_html(report, {})
