"""Throughput and latency of `GET /v1/jobs/{id}` under 50 polling clients, beside a bare FastAPI endpoint.

    .venv/bin/python bench/api_poll.py [--seconds 10] [--clients 50]

Starts the API (uvicorn, one process) against a fresh PostgreSQL database (TAMING_TEST_DATABASE_URL or
postgres@127.0.0.1/test's server), seeds one job, then polls it with N concurrent httpx clients for a
while; does the same against a FastAPI app whose one endpoint returns a constant, in the same run.
Goal (issue 14): at least 0.6x the bare endpoint's throughput and p99 within 1.5x its p99. Loopback only.

With `--streams N` (issue 11: goal p99 under 1 s, 0 errors, beside 100 streams), the API is polled once more
while N clients hold `GET /v1/jobs/{id}/events` open on the same job.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from fastapi import FastAPI

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

bare_app = FastAPI()


@bare_app.get("/const")
def const() -> dict[str, bool]:
    """The baseline: a sync endpoint (like the API's) that touches nothing."""
    return {"ok": True}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fresh_database() -> tuple[str, str]:
    import psycopg

    base = os.environ.get("TAMING_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    name = f"taming_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return base, base.rsplit("/", 1)[0] + f"/{name}"


def drop_database(base: str, url: str) -> None:
    import psycopg

    with psycopg.connect(base.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def seed(settings: object) -> tuple[str, str]:
    from app import migrate
    from app.auth import create_key
    from app.db import get_engine, session_scope
    from app.models import Job, Model

    migrate.upgrade(settings)  # type: ignore[arg-type]
    with session_scope(settings) as session:  # type: ignore[arg-type]
        key_row, key = create_key(session, "operator", "bench")
        model = Model(name="bench", remember_prefix="remember/x/", image_size=32, channels=1, n_bits=5,
                      created_by=key_row.id)
        session.add(model)
        session.flush()
        job = Job(kind="forget_identity", state="running", model_id=model.id, subject_ref="bench",
                  parameters={"max_iterations": 800}, submitted_by=key_row.id, uploads=[],
                  progress={"iteration": 120, "max_abs_d": 1.7})
        session.add(job)
        session.flush()
        job_id = job.id
    get_engine(settings.database_url).dispose()  # type: ignore[attr-defined]
    return key, job_id


async def load(url: str, headers: dict[str, str], clients: int, seconds: float) -> tuple[int, list[float], int]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def one() -> None:
        nonlocal errors
        async with httpx.AsyncClient(headers=headers, timeout=10) as client:
            while time.perf_counter() < deadline:  # bounded by time: no request loop outlives the run
                t0 = time.perf_counter()
                try:
                    r = await client.get(url)
                    errors += r.status_code != 200
                except httpx.HTTPError:  # a poll that waited 10 s is an error, not the end of the run
                    errors += 1
                latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(one() for _ in range(clients)))
    return len(latencies), latencies, errors


async def hold_streams(url: str, headers: dict[str, str], n: int, seconds: float) -> int:
    """Keep n event streams open for `seconds`; how many failed to open."""
    failed = 0

    async def one() -> None:
        nonlocal failed
        async with httpx.AsyncClient(headers=headers, timeout=seconds + 10) as client:
            try:
                async with client.stream("GET", url) as r:
                    failed += r.status_code != 200
                    async for _ in r.aiter_lines():
                        pass
            except httpx.HTTPError:
                failed += 1

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return failed


async def load_beside_streams(base: str, headers: dict[str, str], clients: int, streams: int,
                              seconds: float) -> tuple[tuple[int, list[float], int], int]:
    holding = asyncio.create_task(hold_streams(f"{base}/events", headers, streams, seconds + 2))
    await asyncio.sleep(1.0)  # every stream has opened and polled
    polled = await load(base, headers, clients, seconds)
    return polled, await holding


def serve(target: list[str], port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "uvicorn", *target, "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning", "--no-access-log"]
    proc = subprocess.Popen(cmd, env=env, cwd=Path(__file__).resolve().parent.parent)
    for _ in range(200):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz" if "--factory" in target
                         else f"http://127.0.0.1:{port}/const", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"server {target} did not start")


def report(name: str, count: int, latencies: list[float], errors: int, seconds: float) -> float:
    qs = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    rate = count / seconds
    print(f"{name:<22} {rate:>9.0f} req/s   p50 {qs[49] * 1000:6.1f} ms   p99 {qs[98] * 1000:6.1f} ms   "
          f"errors {errors}")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--streams", type=int, default=0, help="then poll again beside this many event streams")
    opts = parser.parse_args()
    from app.settings import Settings, child_environment

    base, db_url = fresh_database()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(var_dir=Path(tmp), database_url=db_url)
            key, job_id = seed(settings)
            env = child_environment(settings)
            api_port, bare_port = free_port(), free_port()
            procs.append(serve(["--factory", "app.main:create_app"], api_port, env))
            procs.append(serve(["bench.api_poll:bare_app"], bare_port, env))
            print(f"{opts.clients} clients, {opts.seconds:.0f} s each, PostgreSQL, one uvicorn process per server")
            api = asyncio.run(load(f"http://127.0.0.1:{api_port}/v1/jobs/{job_id}",
                                   {"Authorization": f"Bearer {key}"}, opts.clients, opts.seconds))
            bare = asyncio.run(load(f"http://127.0.0.1:{bare_port}/const", {}, opts.clients, opts.seconds))
            api_rate = report("GET /v1/jobs/{id}", *api, opts.seconds)
            bare_rate = report("bare constant", *bare, opts.seconds)
            print(f"ratio (API / bare)     {api_rate / bare_rate:.2f}   (goal >= 0.6, p99 <= 1.5x the bare p99)")
            if opts.streams:
                polled, failed = asyncio.run(load_beside_streams(
                    f"http://127.0.0.1:{api_port}/v1/jobs/{job_id}", {"Authorization": f"Bearer {key}"},
                    opts.clients, opts.streams, opts.seconds))
                report(f"beside {opts.streams} streams", *polled, opts.seconds)
                print(f"streams that failed    {failed}   (goal: p99 < 1 s, 0 errors)")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        drop_database(base, db_url)


if __name__ == "__main__":
    main()
