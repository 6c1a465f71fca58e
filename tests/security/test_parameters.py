"""Job parameters: finite numbers in their stated ranges, or a 422 that names the field; no job row either way."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from svc_api import Api

from app.db import session_scope
from app.models import Job
from app.schemas import SEED_MAX, JobParameters

HOSTILE = [
    ('{"epsilon": Infinity}', "epsilon"), ('{"epsilon": NaN}', "epsilon"), ('{"delta": NaN}', "delta"),
    ('{"delta": Infinity}', "delta"), ('{"delta": -Infinity}', "delta"), ('{"delta": 1e308}', "delta"),
    ('{"delta": 1e400}', "delta"), ('{"alpha": NaN}', "alpha"), ('{"gamma": Infinity}', "gamma"),
    ('{"lr": NaN}', "lr"), ('{"target_share": NaN}', "target_share"), ('{"seed": 36893488147419103232}', "seed"),
    ('{"seed": -1}', "seed"), ('{"max_iterations": 1e400}', "max_iterations"), ('{"delta": 0}', "delta"),
]


def _jobs(api: Api) -> int:
    with session_scope(api.settings) as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


@pytest.mark.parametrize(("text", "field"), HOSTILE)
def test_non_finite_or_out_of_range_parameters_are_422(api: Api, text: str, field: str) -> None:
    model = api.register_model(32)
    r = api.submit(model["id"], parameters=text)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_parameters"
    assert field in r.json()["error"]["message"]
    assert _jobs(api) == 0


def test_the_largest_seed_and_omitted_knobs_are_accepted(api: Api) -> None:
    model = api.register_model(32)
    r = api.submit(model["id"], parameters={"seed": SEED_MAX, "method": "paper"})
    assert r.status_code == 202, r.text
    params = r.json()["parameters"]
    assert params["seed"] == SEED_MAX
    assert params["delta"] == JobParameters(method="paper").delta  # filled from the method's knobs
    assert params["epsilon"] > 0


def test_parameter_ranges_are_in_the_openapi_schema(api: Api) -> None:
    schema = api.client.get("/openapi.json").json()
    form = next(v for k, v in schema["components"]["schemas"].items() if k.startswith("Body_submit_job"))
    content = form["properties"]["parameters"]["contentSchema"]["properties"]
    assert content["seed"]["maximum"] == SEED_MAX and content["seed"]["minimum"] == 0
    delta = content["delta"]["anyOf"][0]
    assert delta["minimum"] == -100 and delta["maximum"] == 100
    assert content["epsilon"]["anyOf"][0]["exclusiveMinimum"] == 0


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400"])
def test_verify_rejects_non_finite_delta(api: Api, value: str) -> None:
    model = api.register_model(32)
    r = api.client.post("/v1/verify", headers=api.h("operator"), data={"model_id": model["id"], "delta": value},
                        files=[("images", ("a.png", b"x", "image/png"))])
    assert r.status_code == 422, r.text
