"""Fixtures of the service tests: settings per test, and the real services for integration tests.

Integration tests use PostgreSQL, Redis and an S3 endpoint. With CI=true a missing service fails the
test; elsewhere it is skipped with the reason. Without TAMING_TEST_S3_ENDPOINT_URL a moto server is
started on loopback for the session.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the svc_* helper modules beside this file

from svc_api import Api

from app.db import get_engine
from app.settings import Settings

PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS_DEFAULT = "redis://127.0.0.1:6379/0"


def unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded mode in a fresh folder: SQLite, local objects, filesystem broker."""
    return Settings(var_dir=tmp_path / "var", verify_prestart=False)  # a verify process only when a test asks


@pytest.fixture
def api(settings: Settings) -> Iterator[Api]:
    with Api(settings) as api:
        yield api


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this session, dropped at its end."""
    import psycopg

    base = os.environ.get("TAMING_TEST_DATABASE_URL", PG_DEFAULT)
    name = f"taming_svc_{uuid.uuid4().hex[:10]}"
    plain = base.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(plain, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        unavailable(f"PostgreSQL at {base} unreachable ({exc})")
    url = base.rsplit("/", 1)[0] + f"/{name}"
    yield url
    get_engine(url).dispose()
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')




@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    url = os.environ.get("TAMING_TEST_REDIS_URL", REDIS_DEFAULT)
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        unavailable(f"Redis at {url} unreachable ({exc})")
    return url


@pytest.fixture
def distributed(tmp_path: Path, pg_url: str, s3_endpoint: str, redis_url: str) -> Settings:
    """Distributed mode: PostgreSQL, a fresh S3 bucket, Redis as the broker."""
    return Settings(var_dir=tmp_path / "var", database_url=pg_url, storage_url=f"s3://t-{uuid.uuid4().hex[:12]}",
                    s3_endpoint_url=s3_endpoint, broker_url=redis_url, verify_prestart=False)


@pytest.fixture
def dist_api(distributed: Settings) -> Iterator[Api]:
    with Api(distributed) as api:
        yield api
