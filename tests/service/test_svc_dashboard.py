"""The dashboard's page and files, `GET /v1/whoami`, the audit log over HTTP and the GDPR due date of a job.

(The dashboard in a real browser is tests/ui/.)
"""

from __future__ import annotations

import re
from datetime import datetime

import pytest
from sqlalchemy import update
from svc_api import Api

from app import audit
from app.db import session_scope
from app.models import AuditLog


def test_the_page_and_its_files_are_served_with_a_strict_policy(api: Api) -> None:
    page = api.client.get("/dashboard")
    assert page.status_code == 200 and "API key" in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "'unsafe-eval'" not in policy
    app_js = api.client.get("/dashboard/static/app.js")
    assert app_js.status_code == 200 and app_js.headers["content-type"].startswith("text/javascript")
    # every module the scripts import is served (a missing one would break the page silently)
    names = {"app.js"}
    todo = ["app.js"]
    while todo:
        text = api.client.get(f"/dashboard/static/{todo.pop()}").text
        for name in re.findall(r'from "\./([a-z_]+\.js)"', text):
            if name not in names:
                names.add(name)
                todo.append(name)
    assert {"api.js", "jobs.js", "job.js", "models.js", "audit.js", "live.js"} <= names
    for name in names:
        assert api.client.get(f"/dashboard/static/{name}").status_code == 200, name
    assert api.client.get("/dashboard/static/dashboard.css").headers["content-type"].startswith("text/css")
    for bad in ("missing.js", "..%2Fsettings.py", "__init__.py", "x.html"):
        assert api.client.get(f"/dashboard/static/{bad}").status_code == 404, bad


def test_whoami(api: Api) -> None:
    r = api.client.get("/v1/whoami", headers=api.h("auditor"))
    assert r.json() == {"id": api.key_ids["auditor"], "name": "test auditor", "role": "auditor"}
    assert api.client.get("/v1/whoami").status_code == 401


@pytest.fixture
def logged(api: Api) -> Api:
    """A log with rows of both subject spellings (the API's `job:<id>`, the worker's bare id)."""
    model = api.register_model()
    api.submit(model["id"])
    with session_scope(api.settings) as session:
        audit.record(session, "worker:w1", "job.started", "a" * 32, {"run_id": "r"})
        audit.record(session, "worker:w1", "version.created", model["id"], {"version": 2})
        for i in range(7):
            audit.record(session, "sweeper", "job.rescued", f"{i:032d}", {"attempts": i})
    return api


def test_auditors_and_admins_page_through_the_log(logged: Api) -> None:
    seen: list[int] = []
    cursor = None
    while True:
        params = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        page = logged.client.get("/v1/audit", headers=logged.h("auditor"), params=params).json()
        seen += [e["id"] for e in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen)) >= 12
    first = logged.client.get("/v1/audit", headers=logged.h("admin"), params={"limit": 200}).json()["items"]
    assert [e["id"] for e in first] == seen
    submit = next(e for e in first if e["action"] == "job.submit")
    assert submit["actor_name"] == "test operator" and submit["hash"] and submit["prev_hash"]


def test_operators_cannot_read_the_log(logged: Api) -> None:
    assert logged.client.get("/v1/audit", headers=logged.h("operator")).status_code == 403
    assert logged.client.get("/v1/audit/verify", headers=logged.h("operator")).status_code == 403
    assert logged.client.get("/v1/audit").status_code == 401


def test_filters(logged: Api) -> None:
    def actions(**params: str) -> list[str]:
        r = logged.client.get("/v1/audit", headers=logged.h("auditor"), params=params)
        assert r.status_code == 200, r.text
        return [e["action"] for e in r.json()["items"]]

    assert actions(action="job.rescued") == ["job.rescued"] * 7
    assert set(actions(action="job.*")) == {"job.rescued", "job.started", "job.submit"}
    assert actions(job_id="a" * 32) == ["job.started"]
    model_rows = logged.client.get("/v1/audit", headers=logged.h("auditor"), params={"action": "model.register"})
    model_id = model_rows.json()["items"][0]["subject"].removeprefix("model:")
    assert actions(model_id=model_id) == ["version.created", "model.register"]  # both spellings of the subject
    assert actions(action="nothing.like.this") == []
    r = logged.client.get("/v1/audit", headers=logged.h("auditor"), params={"cursor": "bm9wZQ"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_cursor"
    r = logged.client.get("/v1/audit", headers=logged.h("auditor"), params={"job_id": "a\x00b"})
    assert r.status_code == 422


def test_verify_over_http(logged: Api) -> None:
    ok = logged.client.get("/v1/audit/verify", headers=logged.h("auditor")).json()
    assert ok["intact"] is True and ok["problems"] == [] and ok["rows"] >= 12
    with session_scope(logged.settings) as session:
        session.execute(update(AuditLog).where(AuditLog.action == "job.started").values(actor="mallory"))
    bad = logged.client.get("/v1/audit/verify", headers=logged.h("admin")).json()
    assert bad["intact"] is False and any("edited" in p for p in bad["problems"])


def test_erasures_carry_their_gdpr_due_date(api: Api) -> None:
    model = api.register_model()
    job = api.submit(model["id"]).json()
    created, due = datetime.fromisoformat(job["created_at"]), datetime.fromisoformat(job["due_at"])
    assert (due.year * 12 + due.month) - (created.year * 12 + created.month) == 1
    assert due.time() == created.time()
    listed = api.client.get("/v1/jobs", headers=api.h("operator")).json()["items"][0]
    assert listed["due_at"] == job["due_at"]


def test_checkpoint_link_for_browsers(api: Api, dist_api: Api) -> None:
    for client, presigned in ((api, False), (dist_api, True)):
        model = client.register_model()
        path = f"/v1/models/{model['id']}/versions/1/checkpoint"
        r = client.client.get(path, headers=client.h("auditor"), params={"link": "true"})
        assert r.status_code == 200
        url = r.json()["url"]
        # S3: the presigned URL (a browser cannot follow a cross-origin redirect); local: none, fetch the path
        assert (url.startswith("http") and model["id"] in url) if presigned else url is None
