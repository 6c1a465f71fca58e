"""Per-key quota of waiting jobs: the one over it is a 429 with Retry-After; other keys are not affected."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from svc_api import Api

from app.settings import Settings


@pytest.fixture
def capped(settings: Settings) -> Iterator[Api]:
    with Api(settings.model_copy(update={"max_queued_jobs_per_key": 3})) as api:
        yield api


def test_a_key_over_its_queued_jobs_gets_429(capped: Api) -> None:
    model = capped.register_model(32)
    codes = [capped.submit(model["id"], subject_ref=f"t{i}").status_code for i in range(5)]
    assert codes == [202, 202, 202, 429, 429]
    r = capped.submit(model["id"], subject_ref="t9")
    assert r.json()["error"]["code"] == "quota_exceeded" and r.headers["Retry-After"]
    assert capped.submit(model["id"], role="other").status_code == 202  # another operator's own quota
    assert len(capped.client.get("/v1/jobs", headers=capped.h("operator")).json()["items"]) == 3
    assert capped.storage.list("uploads/") and len({k.split("/")[1] for k in capped.storage.list("uploads/")}) == 4


def test_an_idempotent_retry_is_not_counted(capped: Api) -> None:
    model = capped.register_model(32)
    for i in range(3):
        assert capped.submit(model["id"], subject_ref=f"t{i}", headers={"Idempotency-Key": f"k{i}"}).status_code == 202
    again = capped.submit(model["id"], subject_ref="t0", headers={"Idempotency-Key": "k0"})
    assert again.status_code == 202 and again.headers.get("Idempotent-Replayed") == "true"


def test_ended_jobs_free_the_quota(capped: Api) -> None:
    model = capped.register_model(32)
    ids = [capped.submit(model["id"], subject_ref=f"t{i}").json()["id"] for i in range(3)]
    assert capped.submit(model["id"]).status_code == 429
    assert capped.client.post(f"/v1/jobs/{ids[0]}:cancel", headers=capped.h("operator")).status_code == 202
    assert capped.submit(model["id"]).status_code == 202


def test_a_key_over_its_daily_upload_bytes_gets_429_and_ended_jobs_still_count(settings: Settings) -> None:
    from app.db import session_scope
    from app.models import Job

    with Api(settings) as probe:  # the default submission's size, to set the cap at two and a half of them
        first = probe.submit(probe.register_model(32)["id"], subject_ref="size").json()["id"]
        with session_scope(probe.settings) as session:
            one = session.get(Job, first).upload_bytes
    assert one > 0
    with Api(settings.model_copy(update={"max_upload_bytes_per_key_per_day": int(2.5 * one)})) as api:
        model = api.register_model(32)
        ids = [api.submit(model["id"], subject_ref=f"t{i}").json()["id"] for i in range(2)]
        over = api.submit(model["id"], subject_ref="t2")
        assert over.status_code == 429 and over.json()["error"]["code"] == "upload_quota_exceeded"
        assert over.headers["Retry-After"] and over.json()["error"]["details"]["used"] == 2 * one
        assert api.client.post(f"/v1/jobs/{ids[0]}:cancel", headers=api.h("operator")).status_code == 202
        assert api.submit(model["id"], subject_ref="t3").status_code == 429  # bytes a day, not bytes waiting
        assert api.submit(model["id"], role="other").status_code == 202  # another key's own quota
