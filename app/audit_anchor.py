"""Anchoring the audit chain outside the database, so that rewriting or truncating it is detected.

The hash chain (app/audit.py) catches an edited or deleted row, but anyone who can write the database can also
re-hash every later row with the project's own digest, or cut rows off the end. Two anchors close that:

- a keyed MAC on every row, HMAC-SHA256 of its hash under a key that is not in the database
  (`Settings.audit_key`, else the file `Settings.audit_key_file`, made on first use with mode 0600): a
  re-hashed row has no valid MAC without the key;
- the head (last row id, hash and MAC) written to a file outside the database (`Settings.audit_head_file`)
  after every commit that adds rows, and published at `GET /v1/audit/head` for anyone to pin: a chain that
  ends before the stored or a pinned head, or differs from it, was truncated or rewritten.

Every process that writes audit rows (API, workers, CLI) must use the same key: in distributed mode set
TAMING_AUDIT_KEY (or a shared TAMING_AUDIT_KEY_FILE) everywhere. Each machine keeps its own head file, which
only ever moves forward: on any of them, verify catches a cut below the newest row that machine wrote.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from app.settings import Settings, get_settings

log = logging.getLogger(__name__)
PENDING = "audit_head"  # session.info: the head this transaction will publish once it commits


@dataclass(frozen=True)
class Head:
    id: int
    hash: str
    mac: str | None


def settings_of(session: Session) -> Settings:
    """The settings the session was opened with (app.db.new_session puts them in session.info)."""
    found = session.info.get("settings")
    return found if isinstance(found, Settings) else get_settings()


@lru_cache(maxsize=8)
def _key_from_file(path: str) -> bytes:
    file = Path(path)
    if not file.exists():
        file.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        except FileExistsError:
            pass  # another process made it a moment ago
    text = file.read_text().strip()
    if len(text) < 32:
        raise RuntimeError(f"the audit key file {file} holds no key (at least 32 characters)")
    return text.encode()


def audit_key(settings: Settings) -> bytes:
    """The MAC key: the setting, else the key file (created on first use)."""
    if settings.audit_key:
        return settings.audit_key.encode()
    return _key_from_file(str(settings.audit_key_file or settings.var_dir / "audit.key"))


def mac(settings: Settings, row_hash: str) -> str:
    return hmac.new(audit_key(settings), row_hash.encode(), hashlib.sha256).hexdigest()


def mac_ok(settings: Settings, row_hash: str, value: str | None) -> bool:
    return value is not None and hmac.compare_digest(mac(settings, row_hash), value)


def head_file(settings: Settings) -> Path:
    return Path(settings.audit_head_file or settings.var_dir / "audit.head")


def stored_head(settings: Settings) -> Head | None:
    """The head last written to the head file, or None when none was."""
    try:
        data: dict[str, Any] = json.loads(head_file(settings).read_text())
        return Head(int(data["id"]), str(data["hash"]), data.get("mac"))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return Head(0, "unreadable head file", None)  # reported by verify, never silently ignored


def _publish(settings: Settings, head: Head) -> None:
    # Only ever forward, under a lock: of two concurrent writers the later row wins. The head is written after
    # its row has committed, so it never names a row the database lacks (no false alarm).
    path = head_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = stored_head(settings)
        if current is None or head.id > current.id:
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(asdict(head)))
            os.replace(tmp, path)


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    head = session.info.pop(PENDING, None)
    if head is None:
        return
    try:
        _publish(settings_of(session), head)
    except Exception:  # the row is committed; a lost head write only weakens the next truncation check
        log.exception("could not publish the audit head (row %s)", head.id)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(PENDING, None)


def pending(session: Session, head: Head) -> None:
    """Publish this head once the session commits."""
    session.info[PENDING] = head
