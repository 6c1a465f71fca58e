"""Fixtures of the security tests: those of tests/service (settings, api, PostgreSQL, Redis, S3), wired in.

pytest shares a conftest's fixtures only below its folder, so this one loads tests/service/conftest.py
under another module name and re-exports its fixtures; the svc_* helpers come onto sys.path with it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_SERVICE = Path(__file__).parents[1] / "service" / "conftest.py"
_spec = importlib.util.spec_from_file_location("service_conftest", _SERVICE)
assert _spec is not None and _spec.loader is not None
_service = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_service)

settings = _service.settings
api = _service.api
pg_url = _service.pg_url
redis_url = _service.redis_url
distributed = _service.distributed
dist_api = _service.dist_api
unavailable = _service.unavailable

# The worker tests' tiny model and embedded stack (tests/worker/conftest.py), for the isolation tests; its
# helper modules (worker_helpers, fake_pipeline) come onto sys.path with it.
_WORKER = Path(__file__).parents[1] / "worker"
sys.path.insert(0, str(_WORKER))
_wspec = importlib.util.spec_from_file_location("worker_conftest", _WORKER / "conftest.py")
assert _wspec is not None and _wspec.loader is not None
_worker = importlib.util.module_from_spec(_wspec)
_wspec.loader.exec_module(_worker)

model_files = _worker.model_files
embedded = _worker.embedded
fake_stack = _worker.fake_stack
