"""The key is checked before the body is read; bodies are capped and timed while they stream in."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import update
from svc_api import Api

from app import events
from app.db import session_scope
from app.models import Job, utcnow
from app.settings import Settings

BOUNDARY = "xyz"


def _call(app: Any, method: str, path: str, headers: dict[str, str], chunks: list[bytes],
          stall_after: int | None = None) -> tuple[int, int, bytes]:
    """Drive the ASGI app directly: (status, body chunks it read, response body); stall_after: chunks sent
    before the client stops sending (but keeps the connection)."""
    read = 0
    sent: dict[str, Any] = {"status": 0, "body": b""}

    async def receive() -> dict[str, Any]:
        nonlocal read
        if stall_after is not None and read >= stall_after:
            await asyncio.sleep(3600)
        if read < len(chunks):
            read += 1
            return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}
        await asyncio.sleep(3600)  # waiting for a disconnect
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            sent["status"] = message["status"]
        elif message["type"] == "http.response.body":
            sent["body"] += message.get("body", b"")

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
             "raw_path": path.encode(), "query_string": b"", "root_path": "", "scheme": "http",
             "server": ("test", 80), "client": ("127.0.0.1", 1),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 30))
    return sent["status"], read, sent["body"]


def _multipart(n_chunks: int, size: int = 2**16) -> list[bytes]:
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"checkpoint\"; filename=\"c\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return [head] + [b"\0" * size] * n_chunks + [f"\r\n--{BOUNDARY}--\r\n".encode()]


FORM = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


@pytest.mark.parametrize("auth", [None, "Bearer tk_not_a_key", "Basic abc"])
@pytest.mark.parametrize("path", ["/v1/models", "/v1/jobs", "/v1/verify"])
def test_no_valid_key_is_401_before_a_byte_of_body(api: Api, auth: str | None, path: str) -> None:
    headers = {**FORM, **({"authorization": auth} if auth else {})}
    status, read, body = _call(api.app, "POST", path, headers, _multipart(64))
    assert (status, read) == (401, 0), body
    assert b'"unauthorized"' in body


def test_a_valid_key_gets_its_body_read(api: Api) -> None:
    status, read, body = _call(api.app, "POST", "/v1/jobs", {**FORM, **api.h("operator")}, _multipart(2))
    assert status == 422 and read == 4, body  # read to the end, then refused for its content


@pytest.fixture
def tight(settings: Settings) -> Iterator[Api]:
    with Api(settings.model_copy(update={"max_request_bytes": 2**20, "body_timeout_seconds": 0.5})) as api:
        yield api


def test_a_chunked_body_over_the_cap_is_cut_off_at_the_cap(tight: Api) -> None:
    status, read, body = _call(tight.app, "POST", "/v1/jobs", {**FORM, **tight.h("operator")}, _multipart(64))
    assert status == 413 and read <= 2**20 // 2**16 + 2, (read, body)


def test_a_client_that_stops_sending_is_cut_off(tight: Api) -> None:
    started = time.monotonic()
    status, read, body = _call(tight.app, "POST", "/v1/jobs", {**FORM, **tight.h("operator")}, _multipart(8),
                               stall_after=3)
    assert status == 408 and read == 3, body
    assert time.monotonic() - started < 5


def test_the_body_timeout_does_not_end_an_event_stream(tight: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "POLL_SECONDS", 0.1)
    model = tight.register_model(32)
    job_id = tight.submit(model["id"]).json()["id"]
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(
        tight.client.get(f"/v1/jobs/{job_id}/events", headers=tight.h("operator")).text), daemon=True)
    reader.start()
    time.sleep(1.5)  # three body timeouts long
    with session_scope(tight.settings) as session:
        session.execute(update(Job).where(Job.id == job_id).values(state="cancelled", finished_at=utcnow()))
    reader.join(timeout=10)
    assert out and out[0].rstrip().endswith('data: {"state": "cancelled"}')
