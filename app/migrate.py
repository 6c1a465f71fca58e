"""Run the Alembic migrations (the only way the schema changes) from code: `upgrade(settings)`."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from app.db import get_engine
from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def alembic_config() -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Bring the database of `settings` to `revision` (idempotent)."""
    config = alembic_config()
    with get_engine(settings.database_url).begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def downgrade(settings: Settings, revision: str = "base") -> None:
    config = alembic_config()
    with get_engine(settings.database_url).begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)
