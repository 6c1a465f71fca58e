"""`python tests/worker/crashing_worker.py STAGE [worker options]`: a real worker that kills itself (SIGKILL, as
`kill -9` would) at one point of writing a remember-set revision, so that a test can check what survives.

STAGE `uploaded`: right after the new revision's objects are uploaded, before the transaction that records
the revision and its version. STAGE `committed`: right after that transaction, before the superseded objects
are deleted.
"""

import os
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from app import revisions
from worker.cli import worker_command


def crash_at(stage: str) -> None:
    def die(*args: Any, **kwargs: Any) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if stage == "uploaded":
        real = revisions.upload

        def upload_then_die(*args: Any, **kwargs: Any) -> None:
            real(*args, **kwargs)
            die()

        revisions.upload = upload_then_die  # type: ignore[assignment]
    elif stage == "committed":
        revisions.ensure_uploaded = die  # type: ignore[assignment]  # the first step after the commit
    else:
        raise SystemExit(f"unknown stage {stage!r}")


if __name__ == "__main__":
    crash_at(sys.argv[1])
    worker_command(sys.argv[2:], prog_name="crashing_worker")
