"""Authorization matrix: every endpoint × every role × own/other's object gives the expected status."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from svc_api import Api, CannedVerifier
from svc_media import checkpoint, png

ROLES = ("admin", "operator", "other", "auditor", None)  # "other" is an operator that does not own the job


def _model_files() -> dict[str, Any]:
    return {"data": {"name": uuid.uuid4().hex},
            "files": [("checkpoint", ("c.safetensors", checkpoint(), "application/octet-stream")),
                      ("remember", ("r.png", png(16), "image/png"))]}


def _job_files(model_id: str) -> dict[str, Any]:
    return {"data": {"kind": "forget_identity", "model_id": model_id, "subject_ref": "t"},
            "files": [("forget", ("f.png", png(32), "image/png"))]}


@pytest.fixture
def world(api: Api, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    api.app.state.verifier = CannedVerifier()
    model = api.register_model()
    job = api.submit(model["id"]).json()
    done = api.submit(model["id"]).json()  # a second job of the same operator, given a report below
    api.storage.put_bytes(f"reports/{done['id']}.json", b'{"schema_version": 1}')
    api.storage.put_bytes(f"reports/{done['id']}.html", b"<html></html>")
    from app.db import session_scope
    from app.models import Job

    with session_scope(api.settings) as session:
        session.get(Job, done["id"]).state = "succeeded"  # type: ignore[union-attr]
    return {"model": model["id"], "job": job["id"], "done": done["id"]}


def _matrix(w: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], dict[str | None, int]]]:
    m, j, d = w["model"], w["job"], w["done"]
    read_all = {"admin": 200, "operator": 200, "other": 200, "auditor": 200, None: 401}
    own = {"admin": 200, "operator": 200, "other": 404, "auditor": 200, None: 401}
    admin_only = {"admin": 200, "operator": 403, "other": 403, "auditor": 403, None: 401}
    return [
        ("GET", "/v1/models", {}, read_all),
        ("GET", f"/v1/models/{m}", {}, read_all),
        ("GET", f"/v1/models/{m}/versions", {}, read_all),
        ("GET", f"/v1/models/{m}/versions/1", {}, read_all),
        ("GET", f"/v1/models/{m}/versions/1/checkpoint", {}, {**admin_only, "auditor": 200}),
        ("POST", f"/v1/models/{m}/versions/1:promote", {"json": {}}, admin_only),
        ("POST", "/v1/models", _model_files(), {**admin_only, "admin": 201}),
        ("GET", "/v1/jobs", {}, read_all),
        ("POST", "/v1/jobs", _job_files(m), {**own, "other": 202, "admin": 202, "operator": 202, "auditor": 403}),
        ("GET", f"/v1/jobs/{j}", {}, own),
        ("GET", f"/v1/jobs/{d}", {}, own),
        ("GET", f"/v1/jobs/{d}/report", {}, own),
        ("GET", f"/v1/jobs/{d}/report.html", {}, own),
        ("GET", f"/v1/jobs/{d}/events", {}, own),
        ("GET", f"/v1/jobs/{uuid.uuid4().hex}", {}, {**own, "admin": 404, "operator": 404, "auditor": 404}),
        ("POST", "/v1/verify", {"data": {"model_id": m}, "files": [("images", ("v.png", png(32), "image/png"))]},
         read_all),
        # Last, because it changes the job: the operator cancels, then the admin finds it already ended.
        ("POST", f"/v1/jobs/{j}:cancel", {}, {"other": 404, "auditor": 403, None: 401, "operator": 202,
                                              "admin": 409}),
    ]


def test_every_endpoint_every_role(api: Api, world: dict[str, Any]) -> None:
    wrong = []
    for method, path, kwargs, expected in _matrix(world):
        order = ["other", "auditor", None, "operator", "admin"]
        for role in order:
            fresh = _model_files() if path == "/v1/models" else kwargs  # model names must be unique
            r = api.client.request(method, path, headers=api.h(role), **fresh)
            if r.status_code != expected[role]:
                wrong.append(f"{method} {path} as {role}: {r.status_code} (expected {expected[role]}) {r.text[:120]}")
            if r.status_code >= 400:
                assert set(r.json()) == {"error"}, r.text
    assert not wrong, "\n".join(wrong)


def test_operators_list_only_their_own_jobs(api: Api, world: dict[str, Any]) -> None:
    mine = {j["id"] for j in api.client.get("/v1/jobs", headers=api.h("operator")).json()["items"]}
    theirs = {j["id"] for j in api.client.get("/v1/jobs", headers=api.h("other")).json()["items"]}
    everyone = {j["id"] for j in api.client.get("/v1/jobs", headers=api.h("auditor")).json()["items"]}
    assert {world["job"], world["done"]} <= mine
    assert not theirs & mine
    assert mine <= everyone


def test_revoked_and_malformed_keys_are_refused(api: Api) -> None:
    from app.db import session_scope
    from app.models import ApiKey, utcnow

    with session_scope(api.settings) as session:
        session.get(ApiKey, api.key_ids["auditor"]).revoked_at = utcnow()  # type: ignore[union-attr]
    assert api.client.get("/v1/models", headers=api.h("auditor")).status_code == 401
    assert api.client.get("/v1/models", headers={"Authorization": "Basic abc"}).status_code == 401
    r = api.client.get("/v1/models", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"


def test_a_key_revoked_while_in_use_stops_working_once_its_cache_entry_lapses(api: Api, monkeypatch: Any) -> None:
    import app.auth
    from app.db import session_scope
    from app.models import ApiKey, utcnow

    assert api.client.get("/v1/models", headers=api.h("auditor")).status_code == 200  # now cached
    with session_scope(api.settings) as session:
        session.get(ApiKey, api.key_ids["auditor"]).revoked_at = utcnow()  # type: ignore[union-attr]
    assert api.client.get("/v1/models", headers=api.h("auditor")).status_code == 200  # within the cache window
    app.auth._recent_keys.clear()  # the window (Settings.key_cache_seconds) has passed
    assert api.client.get("/v1/models", headers=api.h("auditor")).status_code == 401
