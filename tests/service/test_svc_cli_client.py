"""`taming submit|jobs|report` against a real HTTP server (uvicorn on loopback), jobs run by the worker's code
on the fake pipeline: the exit statuses a CI pipeline branches on, one-line errors, plain progress lines."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from click.testing import CliRunner, Result
from svc_api import Api
from svc_media import glow_checkpoint, png

from app.main import create_app
from app.settings import Settings
from console import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "worker"))  # the fake pipeline
import fake_pipeline

FAST = ("--param", "max_iterations=3", "--param", "delta=2")


class Live:
    """The API on a free loopback port, and a worker thread that runs every job the API enqueues."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.queue: list[str] = []
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = uvicorn.Config(create_app(api.settings, enqueue=self.queue.append), host="127.0.0.1",
                                port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.threads = [threading.Thread(target=self.server.run, daemon=True)]
        self.run_jobs = threading.Event()
        self.stop = threading.Event()
        self.threads.append(threading.Thread(target=self._work, daemon=True))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _work(self) -> None:
        from worker.runner import handle_doorbell

        while not self.stop.wait(0.05):
            if self.run_jobs.is_set() and self.queue:
                handle_doorbell(self.queue.pop(0), self.api.settings)

    def __enter__(self) -> Live:
        for thread in self.threads:
            thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.server.should_exit = True
        for thread in self.threads:
            thread.join(timeout=10)


@pytest.fixture
def live(api: Api, monkeypatch: pytest.MonkeyPatch) -> Iterator[Live]:
    import taming.pipeline

    monkeypatch.setattr(taming.pipeline, "run_requests", fake_pipeline.run_requests)
    with Live(api) as server:
        yield server


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "person"
    folder.mkdir()
    for i in range(2):
        (folder / f"{i}.png").write_bytes(png(16, seed=30 + i))
    return folder


def taming(live: Live, *args: str, role: str = "operator") -> Result:
    return CliRunner().invoke(main, [*args[:2], "--api", live.url, "--key", live.api.keys[role], *args[2:]])


def _model(live: Live) -> str:
    return str(live.api.register_model(size=16, blob=glow_checkpoint(16))["id"])


def test_wait_succeeds_with_exit_0_and_json(live: Live, images: Path) -> None:
    live.run_jobs.set()
    r = taming(live, "submit", "forget", "--model", _model(live), "--images", str(images), *FAST,
               "--subject-ref", "ticket-9", "--wait", "--json")
    assert r.exit_code == 0, r.stderr
    job = json.loads(r.stdout)
    assert job["state"] == "succeeded" and job["subject_ref"] == "ticket-9" and job["version"] == 2
    assert "succeeded, done in 3 iterations" in r.stderr  # plain lines, not a bar: stderr is no terminal
    assert "stop criterion met: True" in r.stderr


def test_a_failed_job_exits_1(live: Live, images: Path) -> None:
    live.run_jobs.set()
    seed = f"seed={fake_pipeline.FAIL_SEED}"  # the fake run ends without its stop criterion met
    r = taming(live, "submit", "forget", "--model", _model(live), "--forget", str(images), *FAST, "--param", seed,
               "--wait")
    assert r.exit_code == 1, r.stderr
    assert "failed: The stop criterion was not met" in r.stderr


def test_cancelled_exits_3_and_timeout_exits_4(live: Live, images: Path) -> None:
    model = _model(live)
    r = taming(live, "submit", "forget", "--model", model, "--images", str(images), "--wait", "--timeout", "0.5")
    assert r.exit_code == 4, r.stderr
    job_id = r.stdout.strip()
    assert "still queued (timed out waiting)" in r.stderr
    cancelled = taming(live, "jobs", "cancel", job_id)
    assert cancelled.exit_code == 0 and f"job {job_id}: cancelled" in cancelled.stderr
    same = ("--subject-ref", "t-3", "--idempotency-key", "k1")
    again = taming(live, "submit", "forget", "--model", model, "--images", str(images), *same)
    live.api.client.post(f"/v1/jobs/{again.stdout.strip()}:cancel", headers=live.api.h("operator"))
    waited = taming(live, "submit", "forget", "--model", model, "--images", str(images), *same, "--wait")
    assert waited.exit_code == 3 and "was cancelled" in waited.stderr


def test_usage_and_refusals_exit_2_in_one_line(live: Live, images: Path, tmp_path: Path) -> None:
    cases = [
        (["submit", "forget", "--model", "m", "--images", str(tmp_path / "missing")], "no such file or folder"),
        (["submit", "forget", "--model", "m", "--images", str(tmp_path)], "no .png, .jpg or .pgm images"),
        (["submit", "forget", "--model", "0" * 32, "--images", str(images)], "HTTP 404: no model"),
        (["submit", "forget", "--model", "m", "--images", str(images), "--param", "nope"], "is not K=V"),
        (["submit", "rebalance", "--model", "m", "--positive", str(images), "--negative", str(images)],
         "needs --target-share"),
    ]
    for args, message in cases:
        r = taming(live, *args)
        assert r.exit_code == 2, (args, r.stderr)
        assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "Traceback" not in r.output
    bad_key = CliRunner().invoke(main, ["jobs", "list", "--api", live.url, "--key", "tk_wrong"])
    assert bad_key.exit_code == 2 and "HTTP 401" in bad_key.stderr


def test_unreachable_service_exits_5_in_one_line(images: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    r = CliRunner().invoke(main, ["submit", "forget", "--url", f"http://127.0.0.1:{port}", "--key", "k",
                                  "--model", "m", "--images", str(images), "--wait"])
    assert r.exit_code == 5 and r.stderr.startswith("error: cannot reach the service")
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output


def test_jobs_list_show_and_report(live: Live, images: Path, tmp_path: Path) -> None:
    live.run_jobs.set()
    r = taming(live, "submit", "forget", "--model", _model(live), "--images", str(images), *FAST, "--wait")
    job_id = r.stdout.strip()
    listed = taming(live, "jobs", "list", "--state", "succeeded")
    assert listed.exit_code == 0 and job_id in listed.stdout and "done in 3 iterations" in listed.stdout
    assert "erased in time (due " in listed.stdout  # the GDPR deadline of an erasure
    shown = taming(live, "jobs", "show", job_id, "--json")
    assert json.loads(shown.stdout)["id"] == job_id
    out = tmp_path / "reports"
    got = taming(live, "report", job_id, "--out", str(out))
    assert got.exit_code == 0, got.stderr
    assert json.loads((out / f"{job_id}.json").read_text())["stopping"]["criterion_met"] is True
    assert (out / f"{job_id}.html").read_text().startswith("<html>")
    missing = taming(live, "report", "0" * 32, "--out", str(out))
    assert missing.exit_code == 2 and "no job" in missing.stderr


def test_due_text() -> None:
    from datetime import UTC, datetime

    from app.jobs_cli import due_text

    now = datetime(2025, 1, 20, tzinfo=UTC)
    job: dict[str, Any] = {"state": "queued", "due_at": "2025-02-14T10:00:00+00:00"}
    assert due_text(job, now) == "due 2025-02-14 (25 days left)"
    assert due_text({**job, "due_at": "2025-01-18T10:00:00+00:00"}, now) == "overdue by 2 days"
    assert due_text({**job, "due_at": None}, now) == "-"
    done = {"state": "succeeded", "due_at": job["due_at"], "created_at": "2025-01-14T10:00:00+00:00"}
    assert due_text({**done, "finished_at": "2025-01-15T10:00:00+00:00"}, now) == "erased in time (due 2025-02-14)"
    assert due_text({**done, "finished_at": "2025-03-01T10:00:00+00:00"}, now) == "erased late (due 2025-02-14)"
    assert due_text({**job, "state": "failed"}, now) == "not erased, due 2025-02-14 (25 days left)"


def test_gdpr_due_date_is_one_calendar_month() -> None:
    from datetime import datetime

    from app.gdpr import due_date

    assert due_date(datetime(2025, 3, 15, 9, 30)) == datetime(2025, 4, 15, 9, 30)
    assert due_date(datetime(2025, 1, 31)) == datetime(2025, 2, 28)
    assert due_date(datetime(2024, 1, 31)) == datetime(2024, 2, 29)
    assert due_date(datetime(2025, 12, 31)) == datetime(2026, 1, 31)


def test_settings_round_trip_for_children() -> None:
    from app.settings import child_environment

    env = child_environment(Settings(webhook_allow=["127.0.0.1", "10.0.0.0/8"]))
    assert env["TAMING_WEBHOOK_ALLOW"] == "127.0.0.1,10.0.0.0/8"


def test_an_unreachable_database_is_one_line_and_exit_5(tmp_path: Path) -> None:
    import os
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TAMING_DATABASE_URL": f"postgresql+psycopg://nobody@127.0.0.1:{port}/none",
           "TAMING_VAR_DIR": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "console", "audit", "verify"], env=env, capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert r.returncode == 5 and r.stderr.startswith("error: cannot reach the database"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
