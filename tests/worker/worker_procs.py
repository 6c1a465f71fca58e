"""Worker processes for the worker tests (the `workers` fixture of conftest.py holds a pool of them)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


class Workers:
    """Worker processes started by a test; all of them are stopped when it ends."""

    def __init__(self, log_dir: Path) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log_dir = log_dir

    def start(self, settings: Any, step_seconds: float | None = None, fake: bool = False,
              crash_at: str | None = None) -> subprocess.Popen[bytes]:
        """A `python -m worker`; with step_seconds, one whose real pipeline sleeps after each iteration; with
        fake, one whose pipeline is tests/worker/fake_pipeline.py (step_seconds per iteration); with crash_at,
        one that kills itself at that stage of writing a remember-set revision (crashing_worker.py)."""
        from app.settings import child_environment

        env = child_environment(settings, PYTHONPATH=str(ROOT))
        if crash_at is not None:
            cmd = [sys.executable, str(ROOT / "tests" / "worker" / "crashing_worker.py"), crash_at,
                   "--loglevel", "INFO"]
        elif fake:
            cmd = [sys.executable, str(ROOT / "tests" / "ui" / "fake_worker.py"), str(step_seconds or 0.0),
                   "--loglevel", "INFO"]
        elif step_seconds is None:
            cmd = [sys.executable, "-m", "worker", "--loglevel", "INFO"]
        else:
            cmd = [sys.executable, str(ROOT / "tests" / "worker" / "paced_worker.py"), str(step_seconds),
                   "--loglevel", "INFO"]
        cmd.append("--no-sweeper")  # the tests sweep themselves, at the moment they choose
        log = open(self.log_dir / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def kill9(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in sorted(self.log_dir.glob("worker-*.log")))

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
