"""The `taming` command: library commands (taming/cli.py), service commands (app/cli.py), the worker.

Each part is imported only when it exists and holds nothing heavy at import time, so `taming serve`
never loads torch into the API process.
"""

from __future__ import annotations

import click


class Main(click.Group):
    """The `taming` group: a database that cannot be reached is one line and exit status 5, not a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            from sqlalchemy.exc import OperationalError  # only once something failed: nothing heavy at start

            if not isinstance(exc, OperationalError):
                raise
            reason = str(exc.orig or exc).strip().splitlines()[0]
            click.echo(f"error: cannot reach the database (TAMING_DATABASE_URL): {reason}", err=True)
            ctx.exit(5)


@click.group(cls=Main)
@click.version_option(package_name="taming-service")
def main() -> None:
    """Make normalizing flows forget: train, tame, evaluate, and serve it over HTTP."""


def _register() -> None:
    from taming.cli import library_commands

    for command in library_commands:
        main.add_command(command)
    from app.cli import service_commands

    for command in service_commands:
        main.add_command(command)
    from worker.cli import worker_command

    main.add_command(worker_command)


_register()
