"""Engines and sessions. One engine per database URL, shared by every caller in the process.

SQLite runs in WAL mode with a generous busy timeout so that the API and a worker process can share the
one file of the embedded mode: readers never block the writer, and writers wait for each other instead
of failing at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from app.settings import Settings, get_settings

SQLITE_BUSY_MS = 30_000


@lru_cache(maxsize=16)
def get_engine(url: str) -> Engine:
    """The engine for `url` (created once per process)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_MS / 1000, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        _ensure_sqlite_folder(url)
        return engine
    # No pre-ping: it would add a round trip to every request; a dropped connection invalidates the pool.
    return create_engine(url, pool_size=20, max_overflow=20, pool_recycle=1800)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _ensure_sqlite_folder(url: str) -> None:
    from pathlib import Path

    path = url.split("///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


@lru_cache(maxsize=16)
def _sessionmaker(url: str) -> sessionmaker[Session]:
    # expire_on_commit=False: a route commits, then still builds its response from the objects.
    return sessionmaker(get_engine(url), expire_on_commit=False)


@lru_cache(maxsize=16)
def _read_sessionmaker(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url).execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)


def new_read_session(settings: Settings) -> Session:
    """A session for reads only, each statement on its own (autocommit): a poll is one round trip to the
    database instead of three (BEGIN, SELECT, ROLLBACK). Never for writes: nothing it adds is committed
    as one."""
    return _read_sessionmaker(settings.database_url)(info={"settings": settings})


def new_session(settings: Settings | None = None) -> Session:
    """A session on the settings' database; the settings ride along in session.info (the audit log's MAC key
    and head storage come from them)."""
    settings = settings or get_settings()
    return _sessionmaker(settings.database_url)(info={"settings": settings})


@contextmanager
def session_scope(settings: Settings | None = None) -> Iterator[Session]:
    """A session that commits when the block ends normally and rolls back when it raises."""
    session = new_session(settings)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
