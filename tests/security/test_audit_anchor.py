"""The audit chain is anchored outside the database: deleting, editing or re-hashing any row, stripping the
MACs, or cutting rows off the end is detected by `taming audit verify` (and GET /v1/audit/verify)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import delete, func, select, update
from svc_api import Api

import app.cli
from app import audit
from app.db import session_scope
from app.models import AuditLog


@pytest.fixture
def chain(api: Api) -> Api:
    """A service whose log holds a few rows: four keys and two models."""
    api.register_model(32)
    api.register_model(32)
    return api


def _problems(api: Api, pinned: audit.anchor.Head | None = None) -> list[str]:
    with session_scope(api.settings) as session:
        return audit.verify(session, pinned)


def _rows(api: Api) -> list[AuditLog]:
    with session_scope(api.settings) as session:
        return list(session.scalars(select(AuditLog).order_by(AuditLog.id)))


def _rehash_from(api: Api, first: int) -> None:
    """What an attacker with the database but not the key can do: recompute every hash from `first` on."""
    with session_scope(api.settings) as session:
        rows = list(session.scalars(select(AuditLog).order_by(AuditLog.id)))
        prev = audit.GENESIS
        for row in rows:
            if row.id >= first:
                row.prev_hash = prev
                row.hash = audit._digest(prev, row.at, row.actor, row.action, row.subject, row.details or {})
            prev = row.hash


def test_an_untouched_chain_is_intact_with_a_mac_on_every_row(chain: Api) -> None:
    assert _problems(chain) == []
    rows = _rows(chain)
    assert len(rows) >= 6 and all(r.mac for r in rows)
    verdict = chain.client.get("/v1/audit/verify", headers=chain.h("auditor")).json()
    assert verdict["intact"] is True


def test_deleting_the_last_row_is_detected(chain: Api) -> None:
    last = _rows(chain)[-1].id
    with session_scope(chain.settings) as session:
        session.execute(delete(AuditLog).where(AuditLog.id == last))
    assert any("cut off the end" in p for p in _problems(chain))


def test_deleting_a_middle_row_is_detected(chain: Api) -> None:
    with session_scope(chain.settings) as session:
        session.execute(delete(AuditLog).where(AuditLog.id == 3))
    assert any("row 4" in p for p in _problems(chain))


def test_editing_and_rehashing_the_rest_is_detected(chain: Api) -> None:
    with session_scope(chain.settings) as session:
        session.execute(update(AuditLog).where(AuditLog.id == 2).values(actor="someone else"))
    _rehash_from(chain, 2)
    problems = _problems(chain)
    assert problems and all("MAC" in p or "head" in p for p in problems), problems
    assert problems[0].startswith("row 2: its MAC")


def test_rehashing_and_stripping_every_mac_is_detected(chain: Api) -> None:
    with session_scope(chain.settings) as session:
        session.execute(update(AuditLog).where(AuditLog.id == 2).values(actor="someone else"))
        session.execute(update(AuditLog).values(mac=None))
    _rehash_from(chain, 2)
    assert any("head" in p for p in _problems(chain))


def test_truncation_is_detected_against_a_pinned_head_without_the_head_file(
        chain: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    head = chain.client.get("/v1/audit/head", headers=chain.h("auditor")).json()
    assert head["id"] == _rows(chain)[-1].id and head["mac"]
    pinned = tmp_path / "head.json"
    pinned.write_text(json.dumps(head))
    with session_scope(chain.settings) as session:
        session.execute(delete(AuditLog).where(AuditLog.id >= head["id"] - 1))
    (Path(chain.settings.var_dir) / "audit.head").unlink()  # the attacker removed the local head file too
    assert _problems(chain) == []  # nothing left to compare with here...
    monkeypatch.setattr(app.cli, "get_settings", lambda: chain.settings)
    result = CliRunner().invoke(app.cli.audit_verify, ["--head", str(pinned)])
    assert result.exit_code == 1 and "cut off the end" in result.output  # ...but the pinned head catches it


def test_the_cli_says_intact(chain: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.cli, "get_settings", lambda: chain.settings)
    result = CliRunner().invoke(app.cli.audit_verify, [])
    assert result.exit_code == 0 and "intact" in result.output


def test_a_no_op_promotion_adds_no_row(chain: Api) -> None:
    model = chain.register_model(32)
    with session_scope(chain.settings) as session:
        before = session.scalar(select(func.count()).select_from(AuditLog))
    r = chain.client.post(f"/v1/models/{model['id']}/versions/1:promote", headers=chain.h("admin"))
    assert r.status_code == 200
    with session_scope(chain.settings) as session:
        assert session.scalar(select(func.count()).select_from(AuditLog)) == before
