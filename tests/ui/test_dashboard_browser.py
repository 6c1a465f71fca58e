"""The dashboard in a real browser: `taming serve` (embedded) in a child process, headless Chromium signs in,
a job submitted over the API shows up queued, a worker process starts, and the row turns running and then
succeeded at 100 %. Screenshots of every page at 1280×800 and of the jobs page at phone width go to
test-output/ui/."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app import migrate
from app.auth import create_key
from app.client import ApiClient
from app.db import session_scope
from app.demo import demo_settings, free_port
from app.settings import Settings, child_environment

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
from svc_media import glow_checkpoint, png

ROOT = Path(__file__).resolve().parents[2]

STEP_SECONDS = 0.1  # the fake run: 40 iterations in about 4 s
PARAMS = {"max_iterations": 40, "delta": 2.0}


class Service:
    """`taming serve --no-worker` and, once started, a worker process on the fake pipeline."""

    def __init__(self, settings: Settings, logs: Path) -> None:
        self.settings, self.logs = settings, logs
        self.env = child_environment(settings, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), TAMING_DEVICE="cpu")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.url = f"http://127.0.0.1:{settings.port}"

    def _start(self, name: str, cmd: list[str]) -> None:
        log = (self.logs / f"{name}.log").open("wb")
        self.procs.append(subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT))

    def serve(self) -> None:
        self._start("serve", [sys.executable, "-m", "console", "serve", "--no-worker"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError((self.logs / "serve.log").read_text()[-2000:])

    def worker(self) -> None:
        self._start("worker", [sys.executable, str(ROOT / "tests" / "ui" / "fake_worker.py"), str(STEP_SECONDS),
                               "--no-sweeper", "--loglevel", "WARNING"])

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[Service, dict[str, str]]]:
    settings = demo_settings(tmp_path / "var", free_port())
    migrate.upgrade(settings)
    keys = {}
    with session_scope(settings) as session:
        for role in ("admin", "operator", "auditor"):
            _, keys[role] = create_key(session, role, f"{role} (browser test)")
    svc = Service(settings, tmp_path)
    try:
        svc.serve()
        yield svc, keys
    finally:
        svc.stop()


def _register(svc: Service, admin: str, folder: Path) -> dict[str, Any]:
    (folder / "glow.safetensors").write_bytes(glow_checkpoint(16))
    remember = []
    for i in range(4):
        remember.append(folder / f"r{i}.png")
        remember[-1].write_bytes(png(16, seed=i))
    return dict(ApiClient(svc.url, admin).register_model("att-tiny", folder / "glow.safetensors", remember))


def _states_until(page: Any, job_id: str, final: str, timeout: float) -> list[str]:
    """The states the job's row showed, in order, until it shows `final`."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    selector = f'tr[data-job="{job_id}"]'
    while time.monotonic() < deadline:
        state = page.evaluate(f"(document.querySelector('{selector}') || {{dataset: {{}}}}).dataset.state || ''")
        if state and (not seen or seen[-1] != state):
            seen.append(state)
        if state == final:
            return seen
        time.sleep(0.1)
    raise AssertionError(f"the row of job {job_id} showed {seen}, never {final}")


@pytest.mark.slow  # about 45 s (two service processes and a browser); .ci/run runs tests/ui explicitly
def test_a_job_goes_from_queued_to_succeeded_on_the_page(service: tuple[Service, dict[str, str]], browser: Any,
                                                         shots: Path, tmp_path: Path) -> None:
    svc, keys = service
    model = _register(svc, keys["admin"], tmp_path)
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.goto(f"{svc.url}/dashboard")
    page.fill("#key", keys["admin"])
    page.click("button:has-text('Sign in')")
    page.wait_for_selector("h1:text('Jobs')")
    assert keys["admin"] not in page.url
    assert page.evaluate("sessionStorage.getItem('taming-key')") == keys["admin"]
    assert page.evaluate("localStorage.length") == 0

    forget = []
    for i in range(2):
        forget.append(tmp_path / f"f{i}.png")
        forget[-1].write_bytes(png(16, seed=40 + i))
    job = ApiClient(svc.url, keys["operator"]).submit("forget_identity", model["id"], "GDPR-2025-0042",
                                                      {"forget": forget}, PARAMS)
    _states_until(page, job["id"], "queued", timeout=15)  # the page refreshes its list every 5 s
    page.screenshot(path=str(shots / "jobs-queued.png"))
    svc.worker()
    seen = _states_until(page, job["id"], "succeeded", timeout=120)
    assert seen[0] == "queued" and "succeeded" in seen, seen
    row = page.locator(f'tr[data-job="{job["id"]}"]')
    assert row.locator("progress").get_attribute("value") == "100"
    assert "100% · done in 40 iterations" in row.inner_text()
    assert "days left" not in row.inner_text() and "erased in time" in row.inner_text()
    page.screenshot(path=str(shots / "jobs-finished.png"))

    row.locator("a").first.click()
    page.wait_for_selector(".verdict")
    assert "Certified" in page.inner_text(".verdict")
    page.screenshot(path=str(shots / "job-page.png"), full_page=True)
    page.click("nav >> text=Models")
    page.wait_for_selector(".version.current")
    assert "v2" in page.inner_text(".version.current")
    page.click(".version.current .erasures summary")  # the erasures v2 carries
    assert "GDPR-2025-0042" in page.inner_text(".version.current .erasures")
    page.screenshot(path=str(shots / "models.png"))
    page.click("button:has-text('Roll back to v1')")  # v2 is an erasure: the guard asks first
    page.wait_for_selector(".warn-box")
    assert "GDPR-2025-0042" in page.inner_text(".warn-box")
    page.click("button:has-text('Roll back anyway')")
    page.wait_for_selector("#toast:has-text('reason')")  # not without a reason
    page.fill(".warn-box textarea", "legal hold #12 (browser test)")
    page.screenshot(path=str(shots / "models-rollback.png"))
    page.click("button:has-text('Roll back anyway')")
    page.wait_for_selector(".version.current:has-text('v1')")
    page.click("nav >> text=Audit log")
    page.wait_for_selector("#audit-rows tr")
    assert "model.promote" in page.inner_text("#audit-rows")
    page.click("#verify")
    page.wait_for_selector(".verdict.ok")
    page.screenshot(path=str(shots / "audit.png"))

    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True).new_page()
    phone.goto(f"{svc.url}/dashboard")
    phone.fill("#key", keys["auditor"])
    phone.click("button:has-text('Sign in')")
    phone.wait_for_selector(f'tr[data-job="{job["id"]}"][data-state="succeeded"]')
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the jobs page is {width} px wide on a 390 px phone"
    phone.screenshot(path=str(shots / "jobs-phone.png"), full_page=True)
    expected = "status of 409"  # the guarded rollback's first answer, which Chromium logs as a failed load
    assert [p for p in problems if expected not in p] == [], problems
