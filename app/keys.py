"""API keys after creation: list them, revoke one. A revoked key is refused at once in this process (its cache
entry goes with the revocation) and within `Settings.key_cache_seconds` in every other API process."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import audit
from app.auth import forget_cached
from app.errors import not_found
from app.models import ApiKey, utcnow


class KeyOut(BaseModel):
    """A key as an admin sees it: never the key itself (only its hash is stored)."""

    id: str
    name: str
    role: str
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, key: ApiKey) -> KeyOut:
        return cls(id=key.id, name=key.name, role=key.role, created_at=key.created_at, revoked_at=key.revoked_at)


class KeyList(BaseModel):
    items: list[KeyOut]


def list_keys(session: Session) -> KeyList:
    """Every key, oldest first, revoked ones included."""
    return KeyList(items=[KeyOut.of(k) for k in session.scalars(select(ApiKey).order_by(ApiKey.created_at))])


def revoke(session: Session, key_id: str, actor: str) -> KeyOut:
    """Revoke a key (audited; revoking a revoked key changes nothing and adds no row); the caller's session
    is committed here."""
    key = session.get(ApiKey, key_id)
    if key is None:
        raise not_found("key", key_id)
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        audit.record(session, actor, "key.revoke", f"key:{key.id}", {"name": key.name, "role": key.role})
        session.commit()
    forget_cached(key.key_hash)
    return KeyOut.of(key)
