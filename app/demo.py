"""`taming demo`: the whole service end to end on the shipped AT&T model, then everything stops.

Fresh var dir, `taming serve` (embedded) as a child on a free loopback port, an admin and an operator
key, the base model registered with its remember set, one person's images submitted for erasure over
HTTP, a progress bar, the report's key figures, the HTML report saved beside the state.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import httpx

from app import migrate
from app.auth import create_key
from app.client import ApiClient, ApiFailure, wait_with_progress
from app.db import session_scope
from app.serve import stop_child
from app.settings import Settings, child_environment

START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_settings(var_dir: Path, port: int) -> Settings:
    # Every location explicit: a TAMING_DATABASE_URL in the caller's environment must not leak in.
    return Settings(var_dir=var_dir, database_url=f"sqlite:///{var_dir / 'taming.db'}",
                    storage_url=str(var_dir / "objects"), broker_url="filesystem://", host="127.0.0.1", port=port)


def _wait_until_up(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise click.ClickException(f"the server exited ({server.returncode}); see {log}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise click.ClickException(f"the server did not come up in {START_TIMEOUT_S} s; see {log}")


def _inputs(models_dir: Path) -> tuple[Path, Path, list[Path], list[Path]]:
    base, remember = models_dir / "base.safetensors", models_dir / "remember.npz"
    forget = sorted((models_dir / "demo" / "forget").glob("*.png"))
    holdout = sorted((models_dir / "demo" / "holdout").glob("*.png"))
    missing = [str(p) for p in (base, remember) if not p.is_file()] + ([] if forget else ["demo/forget/*.png"])
    if missing:
        raise click.ClickException(f"shipped model files missing: {', '.join(missing)}")
    return base, remember, forget, holdout


def run_demo(var_dir: Path, models_dir: Path) -> int:
    base, remember, forget, holdout = _inputs(models_dir)
    shutil.rmtree(var_dir, ignore_errors=True)
    var_dir.mkdir(parents=True)
    settings = demo_settings(var_dir.resolve(), free_port())
    migrate.upgrade(settings)
    with session_scope(settings) as session:
        _, admin = create_key(session, "admin", "demo admin", actor="demo")
        _, operator = create_key(session, "operator", "demo operator", actor="demo")
    url = f"http://127.0.0.1:{settings.port}"
    log = var_dir / "serve.log"
    click.echo(f"starting the service on {url} (log: {log})")
    with log.open("wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "console", "serve"], env=child_environment(settings),
                                  stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_until_up(url, server, log)
            return _exercise(url, admin, operator, base, remember, forget, holdout, var_dir)
        except ApiFailure as exc:
            click.echo(f"error: {exc}", err=True)
            return 1
        finally:
            click.echo("stopping the service")
            stop_child(server, grace=30)


def _exercise(url: str, admin: str, operator: str, base: Path, remember: Path, forget: list[Path],
              holdout: list[Path], var_dir: Path) -> int:
    model = ApiClient(url, admin).register_model("att32", base, [remember])
    click.echo(f"registered model {model['id']} ({model['image_size']}x{model['image_size']}, "
               f"{model['channels']} channel(s))")
    client = ApiClient(url, operator)
    files = {"forget": forget, **({"holdout": holdout} if holdout else {})}
    job = client.submit("forget_identity", model["id"], "demo-erasure-1", files)
    click.echo(f"submitted job {job['id']}: forget {len(forget)} images, {len(holdout)} held out")
    job = wait_with_progress(client, job["id"])
    if job["state"] != "succeeded":
        click.echo(f"job {job['state']}: {job.get('error')}", err=True)
        return 1
    report = client.report(job["id"])
    html = var_dir / "report.html"
    html.write_text(client.report_html(job["id"]))
    _print_figures(report, job)
    click.echo(f"HTML report: {html}")
    return 0 if report.get("stopping", {}).get("criterion_met") else 1


def _print_figures(report: dict[str, Any], job: dict[str, Any]) -> None:
    stopping, metrics = report.get("stopping", {}), report.get("metrics", {})
    mean_q = metrics.get("mean_quantile", {}).get("forget", {})
    bpd = metrics.get("bpd_remember", {})
    lines = [
        f"new model version       {job.get('version')}",
        f"stop criterion met      {stopping.get('criterion_met')}",
        f"iterations              {stopping.get('iterations')}",
        f"q_T(D_F) (mean)         {_fmt(mean_q.get('after'))}   (before {_fmt(mean_q.get('before'))})",
    ]
    for name, value in (metrics.get("quantile_drop") or {}).items():
        lines.append(f"QD({name}){' ' * max(1, 20 - len(name))}{_fmt(value)}")
    shift = (metrics.get("bpd_shift_sigma") or {}).get("forget_holdout")
    if shift is not None:  # the fair measure for unseen photos (their quantiles are against training images)
        lines.append(f"held-out photos moved   {_fmt(shift, 2)} σ_R up in bpd")
    share = ((metrics.get("discrete_likelihood") or {}).get("forget") or {}).get("share_of_rise")
    if share is not None:  # how much of D_F's bpd rise is a real fall in probability
        lines.append(f"rise kept, discrete bpd {_fmt(100 * share, 0)} %")
    lines.append(f"bpd remember            {_fmt(bpd.get('before'))} -> {_fmt(bpd.get('after'))}")
    lines.append(f"wall seconds            {_fmt(report.get('timing', {}).get('wall_seconds'), 1)}")
    click.echo("\n".join(lines))


def _fmt(value: object, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else str(value)
