"""Distributed mode end to end at the API: PostgreSQL rows, S3 objects, Redis as the broker."""

from __future__ import annotations

import httpx
import pytest
from svc_api import Api

from app.settings import Settings

pytestmark = pytest.mark.integration


def test_lifecycle_on_postgres_s3_redis(dist_api: Api) -> None:
    api = dist_api
    assert api.client.get("/readyz").json()["checks"] == {"database": "ok", "storage": "ok", "broker": "ok"}
    model = api.register_model()
    first = api.submit(model["id"], headers={"Idempotency-Key": "same"})
    again = api.submit(model["id"], headers={"Idempotency-Key": "same"})
    assert first.status_code == again.status_code == 202 and first.json()["id"] == again.json()["id"]
    job = first.json()
    assert len(api.storage.list(f"uploads/{job['id']}/")) == 2
    assert api.client.get(f"/v1/jobs/{job['id']}", headers=api.h("other")).status_code == 404
    r = api.client.get(f"/v1/models/{model['id']}/versions/1/checkpoint", headers=api.h("admin"),
                       follow_redirects=False)
    assert r.status_code == 307 and httpx.get(r.headers["location"]).content[8:9] == b"{"
    cancelled = api.client.post(f"/v1/jobs/{job['id']}:cancel", headers=api.h("operator")).json()
    assert cancelled["state"] == "cancelled" and api.storage.list(f"uploads/{job['id']}/") == []


def test_bad_input_leaves_nothing_on_s3(dist_api: Api) -> None:
    model = dist_api.register_model()
    before = dist_api.storage.list("")
    r = dist_api.submit(model["id"], files=[("forget", ("a.png", b"\x89PNG\r\n\x1a\n broken", "image/png"))])
    assert r.status_code == 422 and dist_api.storage.list("") == before


def test_enqueue_reaches_redis(distributed: Settings, redis_url: str) -> None:
    """The real doorbell: app.queue.enqueue puts a message on the Redis `gpu` queue."""
    import redis

    from app import queue

    own_db = redis_url.rsplit("/", 1)[0] + "/15"  # a database no worker listens on
    queue.configure(distributed.model_copy(update={"broker_url": own_db}))
    try:
        r = redis.Redis.from_url(own_db)
        r.delete("gpu")
        queue.enqueue("0" * 32)
        assert r.llen("gpu") == 1
        r.delete("gpu")
    finally:
        queue.configure(Settings())
