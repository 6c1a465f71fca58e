"""The README's configuration table, generated from `app.settings.Settings` so that the two cannot disagree.

    python -m app.settings_doc                   # print the table
    python -m app.settings_doc --write README.md # replace the table between the marker comments

tests/test_settings_doc.py fails when the README's table is not what this prints.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo

from app.settings import Settings

START = "<!-- settings-table:start (generated: python -m app.settings_doc --write README.md) -->"
END = "<!-- settings-table:end -->"
UNITS = ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"))


def _default(name: str, field: FieldInfo) -> str:
    value: Any = field.get_default(call_default_factory=True)
    if value is None:
        return "none"
    if value == "":
        return "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    text = f"`{value}`"
    if name.endswith("_bytes") and isinstance(value, int):
        for size, unit in UNITS:
            if value >= size and value % size == 0:
                return f"{text} ({value // size} {unit})"
    return text


def table() -> str:
    """The markdown table: one row per setting, its environment variable, default and description."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(f"| `TAMING_{name.upper()}` | {_default(name, field)} | {meaning} |")
    return "\n".join(rows)


def replace_in(text: str) -> str:
    """`text` with the part between the markers replaced by the current table."""
    head, start, rest = text.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise ValueError(f"the markers {START!r} and {END!r} are missing")
    return f"{head}{START}\n{table()}\n{END}{tail}"


def section(text: str) -> str:
    """The table between the markers of `text`, as it stands."""
    return text.partition(START)[2].partition(END)[0].strip("\n")


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--write":
        path = Path(argv[1])
        path.write_text(replace_in(path.read_text()))
        return 0
    if argv:
        print("usage: python -m app.settings_doc [--write README.md]", file=sys.stderr)
        return 2
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
