"""Service commands of `taming`: serve, keys, audit, submit, jobs, report, demo (added to the group by console/)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from app.jobs_cli import jobs, report
from app.settings import get_settings
from app.submit import submit


@click.command()
@click.option("--host", default=None, help="Address to listen on (default: TAMING_HOST).")
@click.option("--port", type=int, default=None, help="Port to listen on (default: TAMING_PORT).")
@click.option("--no-worker", is_flag=True, help="Only the API (workers and the sweeper run elsewhere).")
def serve(host: str | None, port: int | None, no_worker: bool) -> None:
    """Run the API; embedded by default, with a worker process and the sweeper beside it."""
    from app.serve import run

    run(get_settings(), host, port, with_worker=not no_worker)


@click.group()
def keys() -> None:
    """Manage API keys."""


@keys.command("create")
@click.option("--role", type=click.Choice(["admin", "operator", "auditor"]), required=True)
@click.option("--name", required=True, help="Who or what the key is for.")
def keys_create(role: str, name: str) -> None:
    """Create a key and print it (alone, on stdout), its webhook signing secret on stderr; both are never
    shown again."""
    from app import migrate
    from app.auth import create_key
    from app.db import session_scope

    settings = get_settings()
    migrate.upgrade(settings)
    with session_scope(settings) as session:
        row, secret = create_key(session, role, name)
        signing = row.webhook_secret
    click.echo(secret)
    click.echo(f"webhook signing secret of this key (verifies its callbacks; shown once): {signing}", err=True)


@keys.command("list")
def keys_list() -> None:
    """List every key: id, role, name, created, revoked (the keys themselves are never stored)."""
    from app import keys as api_keys
    from app import migrate
    from app.db import session_scope

    settings = get_settings()
    migrate.upgrade(settings)
    with session_scope(settings) as session:
        for key in api_keys.list_keys(session).items:
            revoked = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
            click.echo(f"{key.id}  {key.role:<8}  {revoked:<24}  {key.created_at:%Y-%m-%d}  {key.name}")


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by its id (see `taming keys list`); API processes refuse it within key_cache_seconds."""
    from app import keys as api_keys
    from app import migrate
    from app.db import session_scope
    from app.errors import ApiError

    settings = get_settings()
    migrate.upgrade(settings)
    with session_scope(settings) as session:
        try:
            key = api_keys.revoke(session, key_id, "cli")
        except ApiError as exc:
            raise click.ClickException(exc.message) from None
    click.echo(f"revoked {key.id} ({key.role}, {key.name})")


@click.group()
def audit() -> None:
    """Inspect the audit log."""


@audit.command("verify")
@click.option("--head", "head_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A head pinned earlier (the JSON of GET /v1/audit/head): the chain must still reach it.")
def audit_verify(head_file: Path | None) -> None:
    """Check the audit log: hash chain, keyed MACs, and the heads kept outside the database; exit 1 naming
    every problem, first one first."""
    import json

    from sqlalchemy import func, select

    from app import audit as audit_log
    from app.audit_anchor import Head
    from app.db import session_scope
    from app.models import AuditLog

    pinned = None
    if head_file is not None:
        data = json.loads(head_file.read_text())
        pinned = Head(int(data["id"]), str(data["hash"]), data.get("mac"))
    with session_scope(get_settings()) as session:
        problems = audit_log.verify(session, pinned)
        count = session.scalar(select(func.count()).select_from(AuditLog))
    if problems:
        for problem in problems:
            click.echo(problem, err=True)
        raise SystemExit(1)
    click.echo(f"audit log intact: {count} rows")


@click.command()
@click.option("--var", "var_dir", type=click.Path(path_type=Path), default=Path("var/demo"), show_default=True)
@click.option("--models", "models_dir", type=click.Path(path_type=Path), default=Path("models/att32"),
              show_default=True, help="Folder with base.safetensors, remember.npz, demo/forget, demo/holdout.")
def demo(var_dir: Path, models_dir: Path) -> None:
    """Start the service, forget one person of the shipped model over HTTP, print the report, stop."""
    from app.demo import run_demo

    sys.exit(run_demo(var_dir, models_dir))


service_commands: list[click.Command] = [serve, keys, audit, submit, jobs, report, demo]
