"""A test client that knows its keys: one key per role plus a second operator, and small request helpers."""

from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi.testclient import TestClient
from svc_media import checkpoint, png

from app.audit_anchor import head_file
from app.auth import create_key
from app.db import session_scope
from app.main import create_app
from app.models import Base
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
        self._create_keys()
        return self

    def _create_keys(self) -> None:
        with session_scope(self.settings) as session:
            for role in ROLES:
                row, secret = create_key(session, "operator" if role == "other" else role, f"test {role}")
                self.keys[role], self.key_ids[role] = secret, row.id

    def reset(self) -> None:
        """Every row deleted (and the audit head with them), then new keys: a service as fresh as a new one, in
        milliseconds, for tests that must not see what an earlier example left (stateful schemathesis)."""
        with session_scope(self.settings) as session:
            for table in reversed(Base.metadata.sorted_tables):
                session.execute(table.delete())
        head_file(self.settings).unlink(missing_ok=True)
        self._create_keys()

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


class CannedVerifier:
    """Stands in for the warm verify process (app.verify.Verifier) where a test is about the API around it:
    answers every image with the given bpd against μ_R = 2, σ_R = 0.5 (threshold 4 at δ = 4)."""

    def __init__(self, bpd: float = 5.0) -> None:
        self.bpd = bpd
        self.requests: list[dict[str, Any]] = []

    def ask(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.requests.append(request)
        mu, sigma, delta = 2.0, 0.5, request["delta"]
        eps = request["epsilon"] or 0.15 * abs(delta)
        d = (self.bpd - (mu + delta * sigma)) / sigma
        images = [{"name": i["name"], "bpd": self.bpd, "quantile": 0.01, "d": d, "reached": d >= -eps,
                   "counted": i["counted"]} for i in request["images"]]
        votes = [i["reached"] for i in images if i["counted"]]
        verdict = {"delta": delta, "epsilon": eps, "threshold": mu + delta * sigma,
                   "remember": {"mu": mu, "sigma": sigma, "n": 3, "draws": 5, "seed": 0}, "images": images,
                   "reached": bool(votes) and all(votes), "counted": len(votes), "summary": "canned"}
        return {"ok": True, "verdict": verdict, "stats_source": "reference_set", "seconds": 0.01}

    def close(self) -> None:
        pass
