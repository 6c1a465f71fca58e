"""`python tests/worker/paced_worker.py STEP_SECONDS [worker options]`: a real worker whose real taming
pipeline sleeps STEP_SECONDS after each iteration, so that a test can kill or cancel it mid-run."""

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import taming.pipeline
from worker.cli import worker_command


def pace(step_seconds: float) -> None:
    real = taming.pipeline.run_requests

    def paced(*args: Any, on_step: Any = None, **kwargs: Any) -> Any:
        def slow_step(info: Any) -> None:
            time.sleep(step_seconds)
            if on_step is not None:
                on_step(info)

        return real(*args, on_step=slow_step, **kwargs)

    taming.pipeline.run_requests = paced  # type: ignore[assignment]


if __name__ == "__main__":
    pace(float(sys.argv[1]))
    worker_command(sys.argv[2:], prog_name="paced_worker")
