"""`python tests/ui/fake_worker.py STEP_SECONDS [worker options]`: a real worker process (Celery, leases, the
job rows, storage) whose taming pipeline is the fake of tests/worker/fake_pipeline.py, STEP_SECONDS per
iteration: a job runs in seconds, and slowly enough to be watched."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "worker"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import fake_pipeline

from worker.cli import worker_command

if __name__ == "__main__":
    fake_pipeline.install(float(sys.argv[1]))
    worker_command(sys.argv[2:], prog_name="fake_worker")
