"""How a caller ends a run early: the one stop signal between the service and the library.

The worker asks a run to stop when a job is cancelled, its lease is lost or it runs past its time limit. It sets
the token (from the taming callback or its heartbeat thread); `taming.tame` looks at it before every iteration
and returns a result marked `stopped`, and `taming.pipeline.run_requests` returns None without evaluating. Why the
run was stopped stays with whoever set the token: the library needs only to end cleanly, and no exception crosses
the library's boundary.
"""

from __future__ import annotations

import threading


class StopToken:
    """A flag one thread sets and a taming loop reads; setting it twice is harmless."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def request(self) -> None:
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()
