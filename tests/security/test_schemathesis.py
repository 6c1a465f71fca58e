"""Schemathesis against the service on SQLite and on PostgreSQL, admin and operator keys: no server error and no
status code the OpenAPI document does not list, for generated valid and invalid requests of every operation.

Slow (minutes): `pytest -m slow tests/security/test_schemathesis.py`. Driven through the Python API (each
operation's Hypothesis strategy), not the pytest plugin, whose lazy fixtures this pytest does not support.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import status_code_conformance
from svc_api import Api

from app.settings import Settings

EXAMPLES = 60  # per operation, mode and key
ROLES = ("admin", "operator")
SKIP = {"GET /v1/jobs/{job_id}/events"}  # a stream of a queued job never ends; tests/security/test_streams.py


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    # PostgreSQL refuses what SQLite stores (NUL bytes, integers past 2^31, non-finite JSON numbers): both run
    database = {"database_url": request.getfixturevalue("pg_url")} if request.param == "postgresql" else {}
    settings = Settings(var_dir=tmp_path_factory.mktemp("st") / "var", verify_prestart=False, **database)
    with Api(settings) as api:
        api.register_model(32)
        yield api


def _run(operation: object, mode: GenerationMode, service: Api, failures: list[str]) -> int:
    calls = 0

    @given(case=operation.as_strategy(generation_mode=mode))  # type: ignore[attr-defined]
    # derandomized: CI runs the same cases every time (a random run found the undocumented 400 of /v1/classifiers)
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              derandomize=True)
    def run(case: schemathesis.Case) -> None:
        nonlocal calls
        for role in ROLES:
            calls += 1
            case.call_and_validate(headers=service.h(role), checks=[not_a_server_error, status_code_conformance])

    try:
        run()
    except Unsatisfiable:
        pass  # no invalid request exists for an operation without parameters (negative mode)
    except Exception as exc:  # every operation's failure is collected, then all are reported
        failures.append(f"{operation.label} ({mode}): {str(exc)[:1500]}")  # type: ignore[attr-defined]
    return calls


@pytest.mark.slow
def test_no_server_errors_and_only_documented_codes(service: Api) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", service.app)
    failures: list[str] = []
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.label in SKIP:
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            calls += _run(operation, mode, service, failures)
    print(f"schemathesis: {calls} calls")
    assert not failures, "\n\n".join(failures)
