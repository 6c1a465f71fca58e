"""`taming worker`: one Celery worker process on queue `gpu` (run one per GPU)."""

from __future__ import annotations

import logging
import os
import socket
import threading

import click

from app.queue import GPU_QUEUE


def start_worker(device: str | None = None, beat: bool = False, sweeper: bool = True, loglevel: str = "INFO") -> None:
    """Run the worker in this process until it is stopped.

    Solo pool, concurrency 1: the task runs in this very process, so the model and the GPU belong to it
    and no forked child inherits a CUDA context. Scale out with more processes (one per GPU, each with
    its own `TAMING_DEVICE=cuda:N`) or more machines.
    """
    from app.settings import get_settings
    from app.sweeper import run_forever
    from worker import run_folders
    from worker.celery_app import configure_worker

    settings = get_settings()
    if device:
        settings = settings.model_copy(update={"device": device})
    app = configure_worker(settings)
    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_folders.sweep()  # a killed attempt's photos must not outlive it
    stop = threading.Event()
    if sweeper:  # the webhook delivery loop goes where the sweeper goes: one place per deployment
        from app.webhook_delivery import run_forever as deliver

        threading.Thread(target=run_forever, args=(stop, settings), name="sweeper", daemon=True).start()
        threading.Thread(target=deliver, args=(stop, settings), name="webhooks", daemon=True).start()
    argv = ["worker", "--queues", GPU_QUEUE, "--pool", "solo", "--concurrency", "1",
            "--loglevel", loglevel, "--hostname", f"gpu-{os.getpid()}@{socket.gethostname()}",
            "--without-mingle", "--without-gossip"]
    if beat:
        argv.append("--beat")
    try:
        app.worker_main(argv)
    finally:
        stop.set()


@click.command("worker")
@click.option("--device", default=None, help="cpu, cuda, cuda:N (default: TAMING_DEVICE, auto = CUDA if present).")
@click.option("--beat/--no-beat", default=False, help="Also run Celery beat (the periodic sweep) in this process.")
@click.option("--sweeper/--no-sweeper", default=True,
              help="Re-enqueue stalled and forgotten jobs, and deliver webhooks, from threads.")
@click.option("--loglevel", default="INFO", show_default=True)
def worker_command(device: str | None, beat: bool, sweeper: bool, loglevel: str) -> None:
    """Run a worker that takes taming jobs from queue `gpu` (one process per GPU)."""
    start_worker(device=device, beat=beat, sweeper=sweeper, loglevel=loglevel)
