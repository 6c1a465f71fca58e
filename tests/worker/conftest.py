"""Fixtures of the worker tests: the services (PostgreSQL, Redis, an S3 endpoint), a fresh database,
Redis db and bucket per test, a tiny model, and worker processes that are always stopped.

Outside CI a missing PostgreSQL or Redis skips the tests that need it; with CI=true it fails them.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import worker_helpers as helpers
from worker_procs import Workers

ROOT = Path(__file__).resolve().parents[2]
DB_URL = os.environ.get("TAMING_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TAMING_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_DB = 13  # the worker tests' own Redis database, apart from other tests'
IN_CI = os.environ.get("CI", "").lower() == "true"
FAST = {  # the worker's clocks, shortened so that crash recovery shows within seconds
    "heartbeat_seconds": 0.5, "stale_after_seconds": 4, "lease_seconds": 4, "checkpoint_every": 5,
    "max_attempts": 3, "job_time_limit_seconds": 600, "device": "cpu",
}


def _missing(what: str, why: object) -> None:
    if IN_CI:
        pytest.fail(f"{what} is not reachable in CI: {why}")
    pytest.skip(f"{what} not reachable: {why}")


def _port_open(url: str, default_port: int) -> bool:
    parts = urlsplit(url.replace("postgresql+psycopg", "postgresql"))
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=1):
            return True
    except OSError:
        return False




@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny Glow fitted to people 0-19 of the AT&T faces, and their images as the remember set."""
    folder = tmp_path_factory.mktemp("model")
    remember = helpers.write_remember(folder, list(range(20)))
    checkpoint = folder / "base.safetensors"
    sha = helpers.tiny_checkpoint(checkpoint, list(range(20)))
    # The pipeline trains a feature space per remember set and caches it under <var_dir>/cache; train
    # it once here and hand a copy to every test's worker.
    from taming.data import load_faces
    from taming.pipeline import features_for

    features_for(load_faces(remember, helpers.SIZE, 1), folder / "cache")
    return {"checkpoint": checkpoint, "remember": remember, "sha256": sha, "cache": folder / "cache"}


def _warm_cache(settings: Any, model_files: dict[str, Any]) -> None:
    import shutil

    shutil.copytree(model_files["cache"], Path(settings.var_dir) / "cache", dirs_exist_ok=True)


def _create_schema(settings: Any) -> None:
    from app.migrate import upgrade  # `alembic upgrade head`: the only schema path, as in production

    upgrade(settings)


@pytest.fixture
def distributed(tmp_path: Path, s3_endpoint: str, model_files: dict[str, Any]) -> Iterator[Any]:
    """Settings for PostgreSQL (a fresh database), Redis (db 13, flushed) and S3 (a fresh bucket)."""
    if not _port_open(DB_URL, 5432):
        _missing("PostgreSQL", DB_URL)
    if not _port_open(REDIS_URL, 6379):
        _missing("Redis", REDIS_URL)
    import psycopg
    import redis

    from app.queue import configure
    from app.settings import Settings
    from app.storage import S3Storage, get_storage

    admin_url = DB_URL.replace("postgresql+psycopg", "postgresql")
    name = f"taming_worker_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(DB_URL)
    db_url = urlunsplit(parts._replace(path=f"/{name}"))
    parts = urlsplit(REDIS_URL)
    broker = urlunsplit(parts._replace(path=f"/{REDIS_DB}"))
    redis.Redis.from_url(broker).flushdb()
    settings = Settings(var_dir=tmp_path / "var", database_url=db_url, broker_url=broker,
                        storage_url=f"s3://worker-{uuid.uuid4().hex[:10]}", s3_endpoint_url=s3_endpoint, **FAST)
    storage = get_storage(settings)
    assert isinstance(storage, S3Storage)
    storage.ensure_bucket()
    _create_schema(settings)
    _warm_cache(settings, model_files)
    configure(settings)
    yield settings
    from app.db import get_engine

    get_engine(db_url).dispose()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def embedded(tmp_path: Path, model_files: dict[str, Any]) -> Any:
    """Settings of the embedded mode: SQLite, a local folder and the filesystem broker under var/."""
    from app.queue import configure
    from app.settings import Settings

    settings = Settings(var_dir=tmp_path / "var", **FAST)
    _create_schema(settings)
    _warm_cache(settings, model_files)
    configure(settings)
    return settings


@pytest.fixture
def workers(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Workers]:
    pool = Workers(tmp_path)
    yield pool
    pool.stop_all()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        print(pool.logs())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture
def fake_stack(embedded: Any, model_files: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str]:
    """The embedded stack with one tiny model, its runs on the fake pipeline (no sleeping, no torch work)."""
    import fake_pipeline

    # through monkeypatch, so that the real pipeline is back for the tests that run after these
    monkeypatch.setattr("taming.pipeline.run_requests", fake_pipeline.run_requests)
    monkeypatch.setattr(fake_pipeline, "STEP_SECONDS", 0.0)
    fake_pipeline.RUNS.clear()
    return embedded, helpers.add_model(embedded, model_files)
