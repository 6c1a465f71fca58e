"""Keys can be listed and revoked (HTTP and CLI); a revoked key is refused at once here, and within
key_cache_seconds when it was revoked elsewhere."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from svc_api import Api

import app.cli
from app.db import session_scope
from app.models import ApiKey, AuditLog, utcnow


def _revocations(api: Api) -> int:
    with session_scope(api.settings) as session:
        return len(session.scalars(select(AuditLog).where(AuditLog.action == "key.revoke")).all())


def test_admin_lists_and_revokes_keys_and_revocation_is_immediate(api: Api) -> None:
    listed = api.client.get("/v1/keys", headers=api.h("admin")).json()["items"]
    assert {k["id"] for k in listed} == set(api.key_ids.values()) and all("hash" not in str(k) for k in listed)
    assert api.client.get("/v1/models", headers=api.h("other")).status_code == 200  # cached now
    r = api.client.delete(f"/v1/keys/{api.key_ids['other']}", headers=api.h("admin"))
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    assert api.client.get("/v1/models", headers=api.h("other")).status_code == 401
    assert api.client.delete(f"/v1/keys/{api.key_ids['other']}", headers=api.h("admin")).status_code == 200
    assert _revocations(api) == 1  # revoking twice records once
    assert api.client.delete("/v1/keys/nope", headers=api.h("admin")).status_code == 404


@pytest.mark.parametrize("role", ["operator", "auditor"])
def test_only_admins_manage_keys(api: Api, role: str) -> None:
    assert api.client.get("/v1/keys", headers=api.h(role)).status_code == 403
    assert api.client.delete(f"/v1/keys/{api.key_ids['admin']}", headers=api.h(role)).status_code == 403
    assert api.client.get("/v1/models", headers=api.h("admin")).status_code == 200


def test_a_key_revoked_elsewhere_stops_within_the_cache_window(api: Api) -> None:
    assert api.settings.key_cache_seconds <= 1.0
    assert api.client.get("/v1/models", headers=api.h("auditor")).status_code == 200  # cached now
    with session_scope(api.settings) as session:  # another process revokes it
        key = session.get(ApiKey, api.key_ids["auditor"])
        assert key is not None
        key.revoked_at = utcnow()
    time.sleep(api.settings.key_cache_seconds + 0.1)
    assert api.client.get("/v1/models", headers=api.h("auditor")).status_code == 401


def test_the_cli_lists_and_revokes(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.cli, "get_settings", lambda: api.settings)
    runner = CliRunner()
    listed = runner.invoke(app.cli.keys, ["list"])
    assert listed.exit_code == 0 and api.key_ids["operator"] in listed.output and "active" in listed.output
    done = runner.invoke(app.cli.keys, ["revoke", api.key_ids["operator"]])
    assert done.exit_code == 0, done.output
    assert "revoked" in runner.invoke(app.cli.keys, ["list"]).output
    assert runner.invoke(app.cli.keys, ["revoke", "nope"]).exit_code != 0
    time.sleep(api.settings.key_cache_seconds + 0.1)
    assert api.client.get("/v1/models", headers=api.h("operator")).status_code == 401
