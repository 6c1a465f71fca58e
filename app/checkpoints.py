"""Checkpoint uploads without torch: read a safetensors header, or convert a rosinality state_dict.

A safetensors file is an 8-byte little-endian header length, a JSON header (tensor offsets plus
`__metadata__`), then the raw tensor bytes. That is all the API needs to learn the model's image size,
channels and n_bits, and to check that the file is whole. Conversion of a rosinality state_dict needs
torch, so it runs as a child process (`python -m console import-rosinality`), keeping the API light.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

FORMAT = "taming-glow/1"
MAX_HEADER = 100 * 2**20
CONVERT_TIMEOUT_S = 600


class CheckpointProblem(ValueError):
    """Why an uploaded checkpoint is not usable (shown to the caller)."""


@dataclass
class CheckpointInfo:
    image_size: int
    channels: int
    n_bits: int
    metadata: dict[str, str]


def looks_like_safetensors(head: bytes) -> bool:
    return len(head) >= 9 and 1 < int.from_bytes(head[:8], "little") <= MAX_HEADER and head[8:9] == b"{"


def read_header(fileobj: BinaryIO, file_size: int) -> CheckpointInfo:
    """Parse and check the header of a taming-glow safetensors file."""
    fileobj.seek(0)
    head = fileobj.read(8)
    length = int.from_bytes(head, "little") if len(head) == 8 else 0
    if not 1 < length <= min(MAX_HEADER, file_size - 8):
        raise CheckpointProblem("not a safetensors file (bad header length)")
    try:
        header: dict[str, Any] = json.loads(fileobj.read(length))
        meta = dict(header.pop("__metadata__", None) or {})
        ends = [int(t["data_offsets"][1]) for t in header.values()]
    except (ValueError, TypeError, KeyError, IndexError):
        raise CheckpointProblem("not a safetensors file (unreadable header)") from None
    fileobj.seek(0)
    if 8 + length + max(ends, default=0) != file_size:
        raise CheckpointProblem("safetensors file is truncated or has trailing bytes")
    if meta.get("format") != FORMAT:
        raise CheckpointProblem(f"checkpoint metadata 'format' is {meta.get('format')!r}, expected {FORMAT!r}")
    try:
        config = json.loads(meta["config"])
        return CheckpointInfo(int(config["img_size"]), int(config["in_channel"]), int(config["n_bits"]), meta)
    except (KeyError, ValueError, TypeError):
        raise CheckpointProblem("checkpoint metadata lacks a config with img_size, in_channel and n_bits") from None


def convert_rosinality(state_path: Path, args_path: Path, out_path: Path) -> None:
    """Run the torch-side importer in a child process; raise with its message when it refuses."""
    cmd = [sys.executable, "-m", "console", "import-rosinality", str(state_path), "--args", str(args_path),
           "--out", str(out_path)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise CheckpointProblem("converting the state_dict took too long") from None
    if done.returncode != 0 or not out_path.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no message"]
        raise CheckpointProblem(f"could not convert the rosinality state_dict: {tail[0]}")
