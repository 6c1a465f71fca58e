"""A test client that knows its keys: one key per role plus a second operator, and small request helpers."""

from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi.testclient import TestClient
from svc_media import checkpoint, png

from app.auth import create_key
from app.db import session_scope
from app.main import create_app
from app.settings import Settings
from app.storage import get_storage

ROLES = ("admin", "operator", "other", "auditor")


class Api:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.enqueued: list[str] = []
        self.app = create_app(settings, enqueue=self.enqueued.append)
        self.client = TestClient(self.app)
        self.storage = get_storage(settings)
        self.keys: dict[str, str] = {}
        self.key_ids: dict[str, str] = {}

    def __enter__(self) -> Api:
        self.client.__enter__()  # runs the lifespan: migrations, re-ringing queued jobs
        with session_scope(self.settings) as session:
            for role in ROLES:
                row, secret = create_key(session, "operator" if role == "other" else role, f"test {role}")
                self.keys[role], self.key_ids[role] = secret, row.id
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.__exit__(*exc)

    def h(self, role: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"} if role else {}

    def register_model(self, size: int = 16, channels: int = 1, name: str | None = None,
                       blob: bytes | None = None) -> dict[str, Any]:
        """A model of `size`² images; `blob` is its checkpoint (default: a header-only one no worker can load)."""
        blob = blob if blob is not None else checkpoint(size, channels)
        files = [("checkpoint", ("base.safetensors", blob, "application/octet-stream"))]
        files += [("remember", (f"r{i}.png", png(size, "L" if channels == 1 else "RGB", seed=i), "image/png"))
                  for i in range(3)]
        r = self.client.post("/v1/models", headers=self.h("admin"), data={"name": name or uuid.uuid4().hex},
                             files=files)
        assert r.status_code == 201, r.text
        return dict(r.json())

    def submit(self, model_id: str, role: str = "operator", files: list[Any] | None = None,
               parameters: dict[str, Any] | str | None = None, headers: dict[str, str] | None = None,
               kind: str = "forget_identity", subject_ref: str = "ticket-1", callback_url: str | None = None) -> Any:
        data = {"kind": kind, "model_id": model_id, "subject_ref": subject_ref}
        if callback_url is not None:
            data["callback_url"] = callback_url
        if parameters is not None:
            data["parameters"] = parameters if isinstance(parameters, str) else json.dumps(parameters)
        if files is None:
            files = [("forget", (f"f{i}.png", png(32, seed=10 + i), "image/png")) for i in range(2)]
        return self.client.post("/v1/jobs", headers={**self.h(role), **(headers or {})}, data=data, files=files)
