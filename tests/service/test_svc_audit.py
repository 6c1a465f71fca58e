"""The audit log's hash chain detects an edited or a deleted row; `taming audit verify` says which."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import delete, update

from app import audit, migrate
from app.cli import audit_verify, keys_create
from app.db import session_scope
from app.models import AuditLog
from app.settings import Settings, get_settings


@pytest.fixture
def chain(settings: Settings) -> Settings:
    migrate.upgrade(settings)
    with session_scope(settings) as session:
        for i in range(5):
            audit.record(session, "tester", "thing.do", f"thing:{i}", {"n": i, "nested": {"x": [1, 2.5]}})
    return settings


def test_intact_chain(chain: Settings) -> None:
    with session_scope(chain) as session:
        assert audit.verify(session) == []


def test_edited_row_is_found(chain: Settings) -> None:
    with session_scope(chain) as session:
        session.execute(update(AuditLog).where(AuditLog.id == 3).values(details={"n": 99}))
    with session_scope(chain) as session:
        assert audit.verify(session) == ["row 3: content does not match its hash (the row was edited)"]


def test_deleted_row_is_found(chain: Settings) -> None:
    with session_scope(chain) as session:
        session.execute(delete(AuditLog).where(AuditLog.id == 2))
    with session_scope(chain) as session:
        problems = audit.verify(session)
    assert problems and problems[0].startswith("row 3: does not follow")


def test_cli_keys_and_audit_verify(chain: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAMING_VAR_DIR", str(chain.var_dir))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        created = runner.invoke(keys_create, ["--role", "operator", "--name", "ci"])
        assert created.exit_code == 0 and created.stdout.strip().startswith("tk_")
        assert len(created.stdout.strip().splitlines()) == 1  # the key alone on stdout
        assert "whsec_" in created.stderr and "whsec_" not in created.stdout
        assert runner.invoke(audit_verify).exit_code == 0
        with session_scope(chain) as session:
            session.execute(update(AuditLog).where(AuditLog.id == 4).values(actor="mallory"))
        bad = runner.invoke(audit_verify)
        assert bad.exit_code == 1 and "row 4" in bad.output
    finally:
        get_settings.cache_clear()
