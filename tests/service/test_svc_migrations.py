"""Alembic is the only schema path: it runs on SQLite and PostgreSQL and matches app/models.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from app import migrate
from app.db import get_engine
from app.models import Base
from app.settings import Settings


@pytest.fixture(params=["sqlite", "postgresql"])
def db_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "sqlite":
        return Settings(var_dir=tmp_path)
    return Settings(var_dir=tmp_path, database_url=request.getfixturevalue("pg_url"))


def test_upgrade_downgrade_upgrade(db_settings: Settings) -> None:
    migrate.upgrade(db_settings)
    migrate.downgrade(db_settings)
    engine = get_engine(db_settings.database_url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    migrate.upgrade(db_settings)
    migrate.upgrade(db_settings)  # idempotent
    assert {"api_keys", "models", "model_versions", "jobs", "audit_log"} <= set(inspect(engine).get_table_names())


def test_migrations_match_the_models(db_settings: Settings) -> None:
    migrate.upgrade(db_settings)
    with get_engine(db_settings.database_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
