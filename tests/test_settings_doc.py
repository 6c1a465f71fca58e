"""The README's configuration table is the one `app.settings_doc` generates from `Settings`."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import settings_doc
from app.settings import Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_table_matches_the_settings() -> None:
    written = settings_doc.section(README.read_text())
    assert written == settings_doc.table(), "run: python -m app.settings_doc --write README.md"


def test_every_setting_has_a_row_with_its_default() -> None:
    rows = settings_doc.table().splitlines()[2:]
    assert len(rows) == len(Settings.model_fields)
    assert "| `TAMING_LEASE_SECONDS` | `60` |" in settings_doc.table()
    assert "| `TAMING_MAX_FILE_BYTES` | `10485760` (10 MiB) |" in settings_doc.table()
    assert all(row.count(" | ") == 2 and not row.endswith("|  |") for row in rows)  # a meaning on every row


def test_the_markers_must_be_there() -> None:
    with pytest.raises(ValueError, match="markers"):
        settings_doc.replace_in("no table here")
