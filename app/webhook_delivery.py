"""The delivery loop: sends due webhook events from the outbox, records every attempt, retries with backoff.

Runs as a thread beside the sweeper (`taming serve` in embedded mode, `taming worker` in distributed
mode), never inside a taming run. Several loops may run at once: each event is claimed by a conditional
update of its `next_attempt_at` before it is sent, so one attempt goes out once. A delivery checks the
URL again (app/ssrf.py) and connects to the address it checked, names the host in the Host header and
in TLS, never follows a redirect and ignores proxy settings of the environment (a proxy would choose the
address itself). Any 2xx is a success; anything else is retried until `webhook_max_attempts`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy import select, update

from app import ssrf, webhooks
from app.db import session_scope
from app.models import ApiKey, WebhookDelivery, WebhookEvent, utcnow
from app.settings import Settings

log = logging.getLogger(__name__)
BATCH = 20


@dataclass
class Outcome:
    """What one POST gave."""

    status_code: int | None
    error: str | None
    address: str | None
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def _claim(settings: Settings, event: WebhookEvent, now: datetime) -> bool:
    """Take this attempt: move its next_attempt_at past the send's timeout, if nobody else moved it first."""
    hold = now + timedelta(seconds=settings.callback_timeout_seconds + 30)
    with session_scope(settings) as session:
        done = session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id == event.id, WebhookEvent.state == "pending",
                   WebhookEvent.next_attempt_at == event.next_attempt_at)
            .values(next_attempt_at=hold)
            .execution_options(synchronize_session=False)
        )
        return bool(done.rowcount == 1)  # type: ignore[attr-defined]


def send(event: WebhookEvent, secret: str, settings: Settings, http: httpx.Client,
         resolve: ssrf.Resolver | None = None) -> Outcome:
    """One signed POST of the event to the address its URL resolves to now (checked again)."""
    try:
        target = ssrf.check(event.url, settings.webhook_allow, resolve)
    except ssrf.UnsafeUrl as exc:
        return Outcome(None, f"refused: {exc}", None, 0)
    body = event.body.encode()
    headers = webhooks.signed_headers(secret, event.id, int(time.time()), body)
    headers["host"] = target.host_header()
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    started = time.monotonic()
    try:
        response = http.post(target.connect_url(), content=body, headers=headers, extensions=extensions,
                             follow_redirects=False, timeout=settings.callback_timeout_seconds)
    except httpx.HTTPError as exc:
        elapsed = int(1000 * (time.monotonic() - started))
        return Outcome(None, f"no answer: {exc or type(exc).__name__}"[:500], target.address, elapsed)
    elapsed = int(1000 * (time.monotonic() - started))
    status = response.status_code
    error = None if 200 <= status < 300 else f"HTTP {status}"
    if response.is_redirect:
        error = f"HTTP {status}: redirects are not followed"
    return Outcome(status, error, target.address, elapsed)


def _record(settings: Settings, event_id: str, outcome: Outcome, now: datetime) -> None:
    with session_scope(settings) as session:
        event = session.get(WebhookEvent, event_id)
        if event is None:
            return
        event.attempts += 1
        session.add(WebhookDelivery(event_id=event.id, attempt=event.attempts, at=now, address=outcome.address,
                                    status_code=outcome.status_code, error=outcome.error,
                                    duration_ms=outcome.duration_ms))
        event.last_status, event.last_error = outcome.status_code, outcome.error
        if outcome.ok:
            event.state, event.delivered_at = "delivered", now
        elif event.attempts >= settings.webhook_max_attempts:
            event.state = "failed"
            log.warning("webhook %s to %s given up after %d attempts: %s", event.id, event.url, event.attempts,
                        outcome.error)
        else:
            event.next_attempt_at = now + timedelta(seconds=webhooks.retry_delay(event.attempts, settings))


def _due(settings: Settings, now: datetime) -> list[tuple[WebhookEvent, str | None]]:
    with session_scope(settings) as session:
        rows = session.execute(
            select(WebhookEvent, ApiKey.webhook_secret)
            .outerjoin(ApiKey, ApiKey.id == WebhookEvent.key_id)
            .where(WebhookEvent.state == "pending", WebhookEvent.next_attempt_at <= now)
            .order_by(WebhookEvent.next_attempt_at)
            .limit(BATCH)
        ).all()
        return [(event, secret) for event, secret in rows]


def deliver_due(settings: Settings, http: httpx.Client | None = None,
                resolve: ssrf.Resolver | None = None) -> int:
    """Send every event that is due now (at most one batch); returns how many attempts were made."""
    own = http is None
    http = http or httpx.Client(trust_env=False, follow_redirects=False)
    sent = 0
    try:
        for event, secret in _due(settings, utcnow()):
            if not _claim(settings, event, utcnow()):
                continue  # another delivery loop took it
            outcome = (send(event, secret, settings, http, resolve) if secret
                       else Outcome(None, "the submitting API key has no signing secret", None, 0))
            _record(settings, event.id, outcome, utcnow())
            sent += 1
    finally:
        if own:
            http.close()
    return sent


def run_forever(stop: threading.Event, settings: Settings) -> None:
    """Deliver until `stop` is set; a database or network hiccup never ends the loop."""
    with httpx.Client(trust_env=False, follow_redirects=False) as http:
        while not stop.wait(settings.webhook_poll_seconds):
            try:
                while deliver_due(settings, http) == BATCH and not stop.is_set():
                    pass  # a full batch: more may be due
            except Exception:
                log.exception("webhook delivery failed")
