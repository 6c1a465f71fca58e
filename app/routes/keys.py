"""/v1/keys: list and revoke API keys (admin). Keys are created with `taming keys create`."""

from __future__ import annotations

from fastapi import APIRouter

from app import keys
from app.auth import AdminKey
from app.deps import SessionDep
from app.errors import ERROR_RESPONSES

router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=ERROR_RESPONSES)


@router.get("", response_model=keys.KeyList)
def list_keys(_key: AdminKey, session: SessionDep) -> keys.KeyList:
    """Every API key (never the key itself), revoked ones included (admin)."""
    return keys.list_keys(session)


@router.delete("/{key_id}", response_model=keys.KeyOut)
def revoke_key(key_id: str, key: AdminKey, session: SessionDep) -> keys.KeyOut:
    """Revoke a key: refused at once here, within key_cache_seconds everywhere (admin; audited)."""
    return keys.revoke(session, key_id, key.id)
