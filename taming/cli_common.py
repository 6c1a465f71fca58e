"""What every command of the command line shares: failing with a reason, reading image sets."""

from __future__ import annotations

import sys
from typing import Any

import click


def fail(message: str) -> None:
    """Exit non-zero with a one-line reason (bad input is the user's to fix, not a traceback)."""
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def parse_range(text: str | None) -> list[int] | None:
    """'0-34' or '1,3,5-7' -> [0, ..., 34]; None stays None."""
    if not text:
        return None
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def load_set(path: str, size: int, channels: int, identities: str | None = None, images: str | None = None) -> Any:
    """Load DATA, optionally keeping some identities and each identity's images (1-based positions)."""
    from taming.data import DataError, load_faces

    try:
        faces = load_faces(path, size, channels)
    except DataError as exc:
        fail(str(exc))
    positions = parse_range(images)
    window = None if positions is None else slice(min(positions) - 1, max(positions))
    keep = faces.select(parse_range(identities), window)
    if len(keep) == 0:
        fail(f"{path}: no images left after selecting identities {identities} and images {images}")
    return keep
