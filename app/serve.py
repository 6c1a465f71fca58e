"""`taming serve`: the API under uvicorn, and in embedded mode a worker process, the sweeper and the webhook
delivery loop beside it.

On SIGINT/SIGTERM uvicorn finishes its requests, then the worker is asked to stop (SIGTERM, then SIGKILL
after a grace period: a job cut short resumes from its saved state on the next start) and the sweeper
thread is told to end.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
from typing import Any

import uvicorn

from app import migrate
from app.main import create_app
from app.settings import Settings, child_environment

log = logging.getLogger(__name__)
WORKER_GRACE_S = 10


def start_worker(settings: Settings) -> subprocess.Popen[bytes]:
    # the sweeper runs here, beside the API, so that it outlives a worker that dies
    return subprocess.Popen([sys.executable, "-m", "worker", "--no-sweeper"], env=child_environment(settings))


def stop_child(child: subprocess.Popen[bytes], grace: float = WORKER_GRACE_S) -> None:
    if child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(grace)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _sweep(stop: threading.Event, settings: Settings) -> None:
    try:
        from app.sweeper import run_forever
    except ImportError:
        log.warning("app.sweeper is missing: stale jobs will not be re-run")
        return
    run_forever(stop, settings)


def run(settings: Settings, host: str | None, port: int | None, with_worker: bool) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    migrate.upgrade(settings)
    stop = threading.Event()
    # uvicorn re-raises the signal that stopped it once it has shut down: catch it here so that the
    # children are stopped below instead of the process dying on the spot.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    worker = start_worker(settings) if with_worker else None
    loops: list[threading.Thread] = []
    if with_worker:
        from app.webhook_delivery import run_forever as deliver

        loops = [threading.Thread(target=_sweep, args=(stop, settings), name="sweeper", daemon=True),
                 threading.Thread(target=deliver, args=(stop, settings), name="webhooks", daemon=True)]
        for loop in loops:
            loop.start()
    config: dict[str, Any] = {"host": host or settings.host, "port": port or settings.port, "log_level": "info"}
    try:
        uvicorn.Server(uvicorn.Config(create_app(settings), **config)).run()
    finally:
        stop.set()
        if worker is not None:
            stop_child(worker)
        for loop in loops:
            loop.join(timeout=5)
