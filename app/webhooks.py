"""Webhooks of a job's `callback_url`, signed the Standard Webhooks way, sent from an outbox.

Whoever changes a job's state records the event in the same transaction (`record`): `job.started`
when a worker claims it, `job.completed` when it ends (succeeded, failed or cancelled). The delivery
loop (app/webhook_delivery.py) sends them later, outside the taming run, and retries with backoff.

Each POST carries `webhook-id` (the same on every retry, so a receiver can drop duplicates),
`webhook-timestamp` (Unix seconds of this attempt) and `webhook-signature: v1,<base64 HMAC-SHA256>` over
`"<id>.<timestamp>.<body>"`, keyed with the submitting API key's secret (`whsec_…`, shown once when the
key is created).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import ssrf
from app.errors import ApiError
from app.models import ApiKey, Job, WebhookDelivery, WebhookEvent, utcnow
from app.settings import Settings

STARTED = "job.started"
COMPLETED = "job.completed"
SECRET_PREFIX = "whsec_"


def check_callback(url: str, key: ApiKey, settings: Settings) -> None:
    """Refuse, with a 422 that says why, a callback URL that may not receive this key's webhooks."""
    try:
        ssrf.check(url, settings.webhook_allow)
    except ssrf.UnsafeUrl as exc:
        raise ApiError(422, "invalid_callback_url", str(exc)) from None
    if not key.webhook_secret:
        raise ApiError(422, "invalid_callback_url", "this API key has no webhook signing secret (it predates "
                       "webhooks); create a new key to use callback_url")


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 over "id.timestamp.body">`, the key being the secret's base64 part decoded."""
    raw = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(raw, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(secret, msg_id, timestamp, body), "content-type": "application/json",
            "user-agent": "taming-webhooks/1"}


def event_id(job_id: str, event_type: str) -> str:
    """The webhook-id of a job's event: derived, so that recording it twice is impossible."""
    return f"msg_{job_id}_{event_type.rsplit('.', 1)[-1]}"


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def payload(job: Job, event_type: str) -> dict[str, Any]:
    """The body of an event: its type, when it happened, and the job as `GET /v1/jobs/{id}` names it."""
    data = {"id": job.id, "kind": job.kind, "state": job.state, "model_id": job.model_id,
            "subject_ref": job.subject_ref, "version": job.version, "error": job.error, "attempts": job.attempts,
            "created_at": _iso(job.created_at), "started_at": _iso(job.started_at),
            "finished_at": _iso(job.finished_at), "report": f"/v1/jobs/{job.id}/report"}
    return {"type": event_type, "timestamp": utcnow().isoformat(), "data": data}


def record(session: Session, job: Job, event_type: str) -> WebhookEvent | None:
    """Put the job's event in the outbox (the caller commits); nothing without a callback or when it exists."""
    if not job.callback_url:
        return None
    msg_id = event_id(job.id, event_type)
    if session.get(WebhookEvent, msg_id) is not None:
        return None
    body = json.dumps(payload(job, event_type), separators=(",", ":"))
    event = WebhookEvent(id=msg_id, job_id=job.id, key_id=job.submitted_by, event_type=event_type,
                         url=job.callback_url, body=body, state="pending", attempts=0, next_attempt_at=utcnow())
    session.add(event)
    return event


def retry_delay(attempts: int, settings: Settings) -> float:
    """Seconds to wait after the `attempts`-th failed delivery: 1, 3, 9, … times the base, capped."""
    return float(min(settings.webhook_retry_seconds * 3 ** max(attempts - 1, 0), settings.webhook_retry_max_seconds))


class DeliveryOut(BaseModel):
    attempt: int
    at: datetime
    address: str | None
    status_code: int | None
    error: str | None
    duration_ms: int


class EventOut(BaseModel):
    id: str
    event_type: str
    url: str
    state: str
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None
    deliveries: list[DeliveryOut]


class EventList(BaseModel):
    items: list[EventOut]


def events_of(session: Session, job_id: str) -> EventList:
    """A job's webhook events, oldest first, each with every delivery attempt."""
    events = session.scalars(select(WebhookEvent).where(WebhookEvent.job_id == job_id)
                             .order_by(WebhookEvent.created_at, WebhookEvent.id)).all()
    tries = session.scalars(select(WebhookDelivery).where(WebhookDelivery.event_id.in_([e.id for e in events]))
                            .order_by(WebhookDelivery.attempt)).all()
    items = [EventOut(id=e.id, event_type=e.event_type, url=e.url, state=e.state, attempts=e.attempts,
                      next_attempt_at=e.next_attempt_at if e.state == "pending" else None, created_at=e.created_at,
                      delivered_at=e.delivered_at,
                      deliveries=[DeliveryOut(attempt=t.attempt, at=t.at, address=t.address, status_code=t.status_code,
                                              error=t.error, duration_ms=t.duration_ms)
                                  for t in tries if t.event_id == e.id])
             for e in events]
    return EventList(items=items)
