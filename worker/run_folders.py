"""The temp folders of taming runs (`taming-run-*`): a person's photos live there while a run goes on.

Each run's folder is removed when the attempt ends, however it ends. A worker killed mid-run (kill -9, out of
memory, power) cannot remove its folder, so every worker sweeps at start-up: a folder whose lock no live
process holds belongs to a dead attempt and is deleted. Several workers on one machine share the temp folder;
the lock (flock, released by the kernel when its holder dies) keeps one from deleting another's live run.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)
PREFIX = "taming-run-"
LOCK = ".owner.lock"
# A folder without its lock file yet (made a moment ago, lock not yet taken) is left alone this long.
UNLOCKED_GRACE_SECONDS = 60.0


def _lock(folder: Path) -> int:
    """Open and exclusively lock the folder's lock file without waiting; OSError when someone holds it."""
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


@contextmanager
def run_folder(run_id: str, base: Path | None = None) -> Iterator[Path]:
    """A private temp folder for one attempt of a run, locked while it lives and removed when it ends."""
    folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{run_id[:8]}-", dir=base))
    fd = _lock(folder)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)


def sweep(base: Path | None = None, now: float | None = None) -> list[Path]:
    """Delete the run folders of dead attempts under `base` (default: the temp folder); returns them."""
    base = Path(base or tempfile.gettempdir())
    now = time.time() if now is None else now
    removed = []
    for folder in sorted(base.glob(f"{PREFIX}*")):
        if not folder.is_dir() or folder.is_symlink():
            continue
        if not (folder / LOCK).exists() and now - folder.stat().st_mtime < UNLOCKED_GRACE_SECONDS:
            continue
        try:
            fd = _lock(folder)
        except OSError:
            continue  # a live attempt holds it
        try:
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            os.close(fd)
        removed.append(folder)
    if removed:
        log.warning("removed %d run folder(s) left by dead attempts: %s", len(removed),
                    ", ".join(p.name for p in removed))
    return removed
