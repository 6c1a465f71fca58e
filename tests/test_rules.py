"""The rules shared across the torch boundary agree on both sides."""

from __future__ import annotations


def test_the_api_knows_every_method_of_the_one_table() -> None:
    from typing import get_args

    from app.schemas import JobParameters
    from rules.method import METHOD_NAMES, knobs

    assert get_args(JobParameters.model_fields["method"].annotation) == METHOD_NAMES
    improved = JobParameters.model_validate({})
    assert improved.method == "improved" and improved.lr == knobs("improved")["lr"] and improved.epsilon == 0.6
    paper = JobParameters.model_validate({"method": "paper", "delta": 3.0})
    assert paper.lr == 5e-5 and paper.gamma == 0.6 and paper.epsilon == 0.45
