"""Webhooks: signed the Standard Webhooks way, sent from the outbox by the delivery loop, retried, recorded.

The end-to-end test runs jobs through the real worker code in-process (claim, run, finish) on the fake
pipeline of tests/worker, with the delivery loop's thread sending to a receiver on 127.0.0.1 that answers
500 to the first delivery of every event. The delivery checks use httpx's MockTransport: nothing leaves
this machine.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from standardwebhooks import Webhook
from svc_api import Api
from svc_media import glow_checkpoint, png
from svc_receiver import Receiver

import app.ssrf
from app import webhook_delivery
from app.db import session_scope
from app.models import ApiKey, WebhookDelivery, WebhookEvent
from app.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "worker"))  # the fake pipeline
import fake_pipeline

FAST = {"max_iterations": 3, "delta": 2.0}
PUBLIC = "93.184.216.34"


def verify(secret: str, headers: dict[str, str], body: bytes, tolerance: int = 300) -> bool:
    """The receiver of the README, verbatim: True when the delivery was signed with `secret`."""
    msg_id, ts, sigs = headers["webhook-id"], headers["webhook-timestamp"], headers["webhook-signature"]
    if abs(time.time() - int(ts)) > tolerance:
        return False  # an old delivery replayed
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(expected, s.partition(",")[2]) for s in sigs.split() if s.startswith("v1,"))


def _hooked(settings: Settings) -> Iterator[Api]:
    fast = settings.model_copy(update={"webhook_allow": ["127.0.0.1"], "webhook_retry_seconds": 0.05,
                                       "webhook_poll_seconds": 0.05, "callback_timeout_seconds": 5})
    with Api(fast) as api:
        yield api


@pytest.fixture(params=["embedded", "distributed"])
def hooked(request: pytest.FixtureRequest) -> Iterator[Api]:
    yield from _hooked(request.getfixturevalue("settings" if request.param == "embedded" else "distributed"))


@pytest.fixture
def hooked_local(settings: Settings) -> Iterator[Api]:
    yield from _hooked(settings)


def _secret(api: Api, role: str = "operator") -> str:
    with session_scope(api.settings) as session:
        key = session.get(ApiKey, api.key_ids[role])
        assert key is not None and key.webhook_secret and key.webhook_secret.startswith("whsec_")
        return key.webhook_secret


def _run_jobs(api: Api, model_id: str, callback: str, n: int, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Submit `n` jobs over HTTP and run them through the worker's own code on the fake pipeline."""
    import taming.pipeline
    from worker.runner import handle_doorbell

    monkeypatch.setattr(taming.pipeline, "run_requests", fake_pipeline.run_requests)
    ids = []
    for i in range(n):
        r = api.submit(model_id, parameters=FAST, callback_url=callback, subject_ref=f"ticket-{i}",
                       files=[("forget", (f"f{i}.png", png(16, seed=20 + i), "image/png"))])
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    assert handle_doorbell(ids[0], api.settings).startswith("ran")
    return ids


def test_every_delivery_is_signed_and_each_job_completes_once(hooked: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    model = hooked.register_model(size=16, blob=glow_checkpoint(16))
    secret = _secret(hooked)
    stop = threading.Event()
    with Receiver(fail_first=True) as receiver:
        ids = _run_jobs(hooked, model["id"], receiver.url, 2, monkeypatch)
        loop = threading.Thread(target=webhook_delivery.run_forever, args=(stop, hooked.settings), daemon=True)
        loop.start()
        deadline = time.monotonic() + 30
        while len({d.headers["webhook-id"] for d in receiver.ok()}) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        loop.join(timeout=10)
    deliveries = receiver.deliveries
    for d in deliveries:  # the failed first answers too: every delivery is signed
        assert verify(secret, d.headers, d.body), d.headers
        Webhook(secret).verify(d.body, d.headers)  # the reference implementation agrees
        assert not verify(secret.replace(secret[-6:], "AAAAAA"), d.headers, d.body)
    events = {d.headers["webhook-id"]: json.loads(d.body) for d in receiver.ok()}
    for job_id in ids:
        mine = [e for e in events.values() if e["data"]["id"] == job_id]
        assert sorted(e["type"] for e in mine) == ["job.completed", "job.started"]
        done = next(e for e in mine if e["type"] == "job.completed")
        assert done["data"]["state"] == "succeeded" and done["data"]["version"] == 2
    by_id: dict[str, list[int]] = {}
    for d in deliveries:
        by_id.setdefault(d.headers["webhook-id"], []).append(d.status)
    assert all(statuses == [500, 200] for statuses in by_id.values()), by_id  # retried once, same webhook-id
    with session_scope(hooked.settings) as session:
        rows = session.scalars(select(WebhookEvent).where(WebhookEvent.job_id.in_(ids))).all()
        assert len(rows) == 4 and {(r.state, r.attempts) for r in rows} == {("delivered", 2)}
        tries = session.scalars(select(WebhookDelivery).where(WebhookDelivery.event_id == rows[0].id)
                                .order_by(WebhookDelivery.attempt)).all()
        assert [(t.attempt, t.status_code, t.address) for t in tries] == [(1, 500, "127.0.0.1"), (2, 200, "127.0.0.1")]
    listed = hooked.client.get(f"/v1/jobs/{ids[0]}/webhooks", headers=hooked.h("operator")).json()["items"]
    assert [(e["event_type"], e["state"]) for e in listed] == [("job.started", "delivered"),
                                                                ("job.completed", "delivered")]
    assert all([d["status_code"] for d in e["deliveries"]] == [500, 200] for e in listed)
    assert hooked.client.get(f"/v1/jobs/{ids[0]}/webhooks", headers=hooked.h("other")).status_code == 404


class Spy:
    """An httpx transport that answers every request with `status` and remembers what it was sent."""

    def __init__(self, status: int = 204, headers: dict[str, str] | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.status, self.headers = status, headers or {}

    def client(self) -> httpx.Client:
        def answer(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            return httpx.Response(self.status, headers=self.headers)

        return httpx.Client(transport=httpx.MockTransport(answer))


def _cancelled_job_event(api: Api, url: str) -> str:
    """A queued job with a callback, cancelled at once: its job.completed event waits in the outbox."""
    model = api.register_model()
    r = api.submit(model["id"], callback_url=url)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert api.client.post(f"/v1/jobs/{job_id}:cancel", headers=api.h("operator")).json()["state"] == "cancelled"
    return job_id


def _event(api: Api, job_id: str) -> WebhookEvent:
    with session_scope(api.settings) as session:
        event = session.scalars(select(WebhookEvent).where(WebhookEvent.job_id == job_id)).one()
        session.expunge(event)
        return event


def test_delivery_connects_to_the_address_it_checked(hooked_local: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.ssrf, "system_resolver", lambda host, port: [PUBLIC])
    job_id = _cancelled_job_event(hooked_local, "https://hooks.example:8443/in?src=taming")
    spy = Spy()
    assert webhook_delivery.deliver_due(hooked_local.settings, spy.client()) == 1
    (request,) = spy.requests
    assert str(request.url) == f"https://{PUBLIC}:8443/in?src=taming"
    assert request.headers["host"] == "hooks.example:8443"
    assert request.extensions["sni_hostname"] == "hooks.example"  # TLS checks the name, not the address
    body = json.loads(request.content)
    assert body["type"] == "job.completed" and body["data"]["state"] == "cancelled"
    assert verify(_secret(hooked_local), dict(request.headers), request.content)
    assert _event(hooked_local, job_id).state == "delivered"


def test_dns_that_turns_internal_is_refused_at_delivery(hooked_local: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.ssrf, "system_resolver", lambda host, port: [PUBLIC])
    job_id = _cancelled_job_event(hooked_local, "http://rebind.example/hook")
    monkeypatch.setattr(app.ssrf, "system_resolver", lambda host, port: ["10.0.0.7"])
    spy = Spy()
    webhook_delivery.deliver_due(hooked_local.settings, spy.client())
    assert spy.requests == []  # nothing was sent
    event = _event(hooked_local, job_id)
    assert event.state == "pending" and event.attempts == 1 and "private address" in (event.last_error or "")


def test_redirects_are_not_followed(hooked_local: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.ssrf, "system_resolver", lambda host, port: [PUBLIC])
    job_id = _cancelled_job_event(hooked_local, "http://hooks.example/in")
    spy = Spy(302, {"location": "http://169.254.169.254/latest/meta-data/"})
    webhook_delivery.deliver_due(hooked_local.settings, spy.client())
    assert len(spy.requests) == 1 and spy.requests[0].url.host == PUBLIC
    event = _event(hooked_local, job_id)
    assert event.state == "pending" and "redirects are not followed" in (event.last_error or "")


def test_a_dead_receiver_is_given_up_after_the_last_attempt(hooked_local: Api,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.ssrf, "system_resolver", lambda host, port: [PUBLIC])
    settings = hooked_local.settings.model_copy(update={"webhook_max_attempts": 3, "webhook_retry_seconds": 0.01})
    job_id = _cancelled_job_event(hooked_local, "http://hooks.example/in")
    spy = Spy(503)
    deadline = time.monotonic() + 10
    while _event(hooked_local, job_id).state == "pending" and time.monotonic() < deadline:
        webhook_delivery.deliver_due(settings, spy.client())
        time.sleep(0.02)
    event = _event(hooked_local, job_id)
    assert (event.state, event.attempts, event.last_status, len(spy.requests)) == ("failed", 3, 503, 3)


def test_retry_waits_grow(settings: Settings) -> None:
    from app.webhooks import retry_delay

    waits = [retry_delay(n, settings) for n in range(1, 9)]
    assert waits[:4] == [5, 15, 45, 135] and waits[-1] == settings.webhook_retry_max_seconds


BAD_CALLBACKS = [
    "http://127.0.0.1:6379/", "http://[::1]/", "http://2130706433/", "http://0x7f.1/", "http:///etc/passwd",
    "http://169.254.169.254/latest/meta-data/", "http://metadata.google.internal/", "http://[fd00:ec2::254]/",
    "http://10.0.0.1/", "http://192.168.1.1/", "http://172.16.0.1/", "http://100.64.0.1/", "http://[fe80::1]/",
    "http://224.0.0.1/", "http://0.0.0.0/", "http://127.1/", "http://0177.0.0.1/", "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:169.254.169.254]/", "http://[2002:a00:1::]/", "http://localhost:8000/", "http://x.localhost/",
    "http://evil.example@127.0.0.1/", "http://user:pw@hooks.example/", "http://hooks.example\\@10.0.0.1/",
    "ftp://hooks.example/", "file:///etc/passwd", "gopher://127.0.0.1:6379/_INFO", "javascript:alert(1)",
    "http://hooks.example:99999/", "http://hooks.exa mple/", "http://hooks.example/\x00", "//hooks.example/",
]


@pytest.mark.parametrize("url", BAD_CALLBACKS)
def test_internal_and_odd_callback_urls_are_refused(api: Api, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.ssrf, "system_resolver", lambda host, port: [PUBLIC])  # names would resolve fine
    model = api.register_model()
    r = api.submit(model["id"], callback_url=url)
    assert r.status_code == 422, (url, r.text)
    error = r.json()["error"]
    assert error["code"] == "invalid_callback_url" and error["message"].startswith("callback_url"), error
    assert api.storage.list("uploads/") == []


def test_a_name_that_resolves_inside_is_refused_without_saying_where(api: Api,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.ssrf, "system_resolver", lambda host, port: [PUBLIC, "10.1.2.3"])
    r = api.submit(api.register_model()["id"], callback_url="http://mixed.example/hook")
    assert r.status_code == 422 and "private address" in r.text and "10.1.2.3" not in r.text


def test_allow_list_admits_hosts_and_cidrs() -> None:
    allow = ["127.0.0.1", "10.20.0.0/16", "hooks.corp"]
    assert app.ssrf.check("http://127.0.0.1:9000/h", allow).address == "127.0.0.1"
    assert app.ssrf.check("http://10.20.3.4/h", allow).address == "10.20.3.4"
    with pytest.raises(app.ssrf.UnsafeUrl):
        app.ssrf.check("http://10.21.0.1/h", allow)
    assert app.ssrf.check("http://hooks.corp/h", allow, lambda h, p: ["10.9.9.9"]).address == "10.9.9.9"


def test_a_key_without_a_signing_secret_cannot_ask_for_webhooks(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.auth import create_key

    monkeypatch.setattr(app.ssrf, "system_resolver", lambda host, port: [PUBLIC])
    with session_scope(api.settings) as session:  # a key made before webhooks existed
        row, old_key = create_key(session, "operator", "old key")
        row.webhook_secret = None
    model = api.register_model()
    r = api.client.post("/v1/jobs", headers={"Authorization": f"Bearer {old_key}"},
                        data={"kind": "forget_identity", "model_id": model["id"], "subject_ref": "t",
                              "callback_url": "https://hooks.example/in"},
                        files=[("forget", ("f.png", png(32), "image/png"))])
    assert r.status_code == 422 and "signing secret" in r.json()["error"]["message"]


def test_submission_with_a_public_callback_is_accepted(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.ssrf, "system_resolver", lambda host, port: [PUBLIC])
    r = api.submit(api.register_model()["id"], callback_url="https://hooks.example/in")
    assert r.status_code == 202, r.text
    assert r.json()["callback_url"] == "https://hooks.example/in"

