"""A person's photos do not outlive a run: run folders go when an attempt ends, and a killed attempt's at the
next worker start."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from worker import run_folders

ROOT = Path(__file__).resolve().parents[2]
PHOTO = b"\x89PNG a person's photo"


def _killed_attempt(base: Path) -> Path:
    """A child process that opens a run folder, writes a photo in it and is then killed with SIGKILL."""
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from worker.run_folders import run_folder
        with run_folder("deadbeef00", Path({str(base)!r})) as folder:
            (folder / "job" / "forget").mkdir(parents=True)
            (folder / "job" / "forget" / "0000.png").write_bytes({PHOTO!r})
            print(folder, flush=True)
            time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    folder = Path(child.stdout.readline().strip())
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    return folder


def _photos_under(base: Path) -> list[Path]:
    wanted = hashlib.sha256(PHOTO).hexdigest()
    return [p for p in base.rglob("*") if p.is_file() and hashlib.sha256(p.read_bytes()).hexdigest() == wanted]


def test_a_killed_attempts_folder_is_removed_at_start_up(tmp_path: Path) -> None:
    folder = _killed_attempt(tmp_path)
    assert folder.is_dir() and _photos_under(tmp_path)  # kill -9 left the photo behind
    with run_folders.run_folder("live0000", tmp_path) as live:  # a live attempt of another worker
        assert run_folders.sweep(tmp_path) == [folder]
        assert live.is_dir()
    assert not _photos_under(tmp_path) and list(tmp_path.iterdir()) == []


def test_every_attempt_removes_its_folder_even_when_it_raises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), run_folders.run_folder("r1", tmp_path) as folder:
        (folder / "x.png").write_bytes(PHOTO)
        raise RuntimeError("the run failed")
    assert not folder.exists()


def test_a_folder_being_made_is_left_alone(tmp_path: Path) -> None:
    fresh = tmp_path / f"{run_folders.PREFIX}new"
    fresh.mkdir()  # made, its lock not yet taken
    assert run_folders.sweep(tmp_path) == []
    assert run_folders.sweep(tmp_path, now=time.time() + 2 * run_folders.UNLOCKED_GRACE_SECONDS) == [fresh]


def test_the_worker_sweeps_when_it_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _killed_attempt(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    class NoCelery:
        def worker_main(self, argv: list[str]) -> None:
            assert not folder.exists(), "the sweep runs before the worker takes a job"

    monkeypatch.setattr("worker.celery_app.configure_worker", lambda settings: NoCelery())
    from worker.cli import start_worker

    start_worker(sweeper=False)
    assert not folder.exists()
