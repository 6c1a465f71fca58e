"""Checkpoint uploads without torch: read a safetensors header, or convert a rosinality state_dict.

A safetensors file is an 8-byte little-endian header length, a JSON header (tensor offsets plus
`__metadata__`), then the raw tensor bytes. That is all the API needs to learn the model's image size,
channels and n_bits, and to check that the file is whole. Conversion of a rosinality state_dict needs
torch, so it runs as a child process (`python -m console import-rosinality`), keeping the API light.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

FORMAT = "taming-glow/1"
MAX_HEADER = 100 * 2**20
# rosinality's train.py defaults, for the names an args.json may leave out
ROSINALITY_DEFAULTS = {"img_size": 64, "n_flow": 32, "n_block": 4, "n_bits": 5}
# how a child that hit its address-space bound dies: in Python, in a C++ allocator, or loading torch itself
OUT_OF_MEMORY = ("MemoryError", "Cannot allocate memory", "failed to map segment", "std::bad_alloc")


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


# Architectures a job can run: anything else is refused at registration rather than after minutes of CPU.
ARCH_RANGES = {"in_channel": (1, 3), "img_size": (4, 512), "n_flow": (1, 64), "n_block": (1, 6),
               "hidden": (1, 4096), "n_bits": (1, 8)}
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _finite_float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:20]} out of range")
    return value


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")


def _parse_json(raw: bytes) -> Any:
    """JSON with finite numbers only; a deeply nested or malformed text is a CheckpointProblem."""
    try:
        return json.loads(raw, parse_float=_finite_float, parse_constant=_reject_constant)
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise CheckpointProblem("not a safetensors file (unreadable header)") from None


def _data_length(header: dict[str, Any]) -> int:
    """Bytes of tensor data the header describes: every tensor well-formed, laid end to end from 0."""
    spans = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or entry.get("dtype") not in DTYPE_BYTES:
            raise CheckpointProblem(f"tensor {str(name)[:80]!r}: unknown dtype or malformed entry")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if (not isinstance(shape, list) or not all(type(d) is int and 0 <= d < 2**32 for d in shape)
                or not isinstance(offsets, list) or len(offsets) != 2
                or not all(type(o) is int and 0 <= o < 2**48 for o in offsets)):
            raise CheckpointProblem(f"tensor {str(name)[:80]!r}: shape or data_offsets malformed")
        count = 1
        for d in shape:
            count *= d
        if offsets[1] - offsets[0] != count * DTYPE_BYTES[entry["dtype"]]:
            raise CheckpointProblem(f"tensor {str(name)[:80]!r}: data_offsets do not match its shape and dtype")
        spans.append((offsets[0], offsets[1]))
    end = 0
    for start, stop in sorted(spans):
        if start != end:
            raise CheckpointProblem("tensor data overlaps or leaves gaps (data_offsets)")
        end = stop
    return end


def check_architecture(config: Any) -> dict[str, Any]:
    """The Glow config, its integers within ARCH_RANGES and consistent (the image halves n_block times)."""
    if not isinstance(config, dict):
        raise CheckpointProblem("checkpoint metadata 'config' is not an object")
    for name, (low, high) in ARCH_RANGES.items():
        value = config.get(name)
        if type(value) is not int or not low <= value <= high:
            raise CheckpointProblem(f"checkpoint config {name} must be an integer in {low}..{high}, not "
                                    f"{str(value)[:40]}")
    if config["in_channel"] not in (1, 3):
        raise CheckpointProblem("checkpoint config in_channel must be 1 (grey) or 3 (colour)")
    if config["img_size"] % 2 ** config["n_block"]:
        raise CheckpointProblem(f"checkpoint config img_size {config['img_size']} is not divisible by "
                                f"2^n_block = {2 ** config['n_block']}")
    for flag in ("affine", "conv_lu"):
        if flag in config and not isinstance(config[flag], bool):
            raise CheckpointProblem(f"checkpoint config {flag} must be true or false")
    return config


def read_header(fileobj: BinaryIO, file_size: int) -> CheckpointInfo:
    """Parse and check the header of a taming-glow safetensors file (structure, data length, architecture)."""
    fileobj.seek(0)
    head = fileobj.read(8)
    length = int.from_bytes(head, "little") if len(head) == 8 else 0
    if not 1 < length <= min(MAX_HEADER, file_size - 8):
        raise CheckpointProblem("not a safetensors file (bad header length)")
    header = _parse_json(fileobj.read(length))
    fileobj.seek(0)
    if not isinstance(header, dict):
        raise CheckpointProblem("not a safetensors file (the header is not an object)")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointProblem("checkpoint __metadata__ must map names to strings")
    if 8 + length + _data_length(header) != file_size:
        raise CheckpointProblem("safetensors file is truncated or has trailing bytes")
    if meta.get("format") != FORMAT:
        raise CheckpointProblem(f"checkpoint metadata 'format' is {str(meta.get('format'))[:40]!r}, "
                                f"expected {FORMAT!r}")
    if "config" not in meta:
        raise CheckpointProblem("checkpoint metadata lacks a config with img_size, in_channel and n_bits")
    config = check_architecture(_parse_json(meta["config"].encode()))
    return CheckpointInfo(config["img_size"], config["in_channel"], config["n_bits"], dict(meta))


def check_rosinality_args(raw: bytes) -> dict[str, Any]:
    """The architecture an args.json asks for, checked before any conversion starts (the channels and the
    width come from the state_dict and are checked on the converted header)."""
    args = _parse_json(raw)
    if not isinstance(args, dict):
        raise CheckpointProblem("args.json must be a JSON object")
    config = {name: args.get(name, default) for name, default in ROSINALITY_DEFAULTS.items()}
    for name, value in config.items():
        low, high = ARCH_RANGES[name]
        if type(value) is not int or not low <= value <= high:
            raise CheckpointProblem(f"args.json {name} must be an integer in {low}..{high}, not {str(value)[:40]}")
    if config["img_size"] % 2 ** config["n_block"]:
        raise CheckpointProblem(f"args.json img_size {config['img_size']} is not divisible by 2^n_block")
    return config


def convert_rosinality(state_path: Path, args_path: Path, out_path: Path, timeout_s: float,
                       memory_bytes: int) -> None:
    """Run the torch-side importer in a child process bounded in time and address space; raise with its message
    when it refuses or runs past a bound (Settings.convert_timeout_seconds, convert_memory_bytes)."""
    try:
        check_rosinality_args(args_path.read_bytes())
    except OSError:
        raise CheckpointProblem("args.json could not be read") from None
    cmd = [sys.executable, "-m", "console", "import-rosinality", str(state_path), "--args", str(args_path),
           "--out", str(out_path)]

    def bounded() -> None:  # in the child, before it execs: a hostile state_dict cannot take the API's memory
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False,
                              preexec_fn=bounded)
    except subprocess.TimeoutExpired:
        raise CheckpointProblem(f"converting the state_dict took longer than {timeout_s:g} s") from None
    if done.returncode != 0 or not out_path.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no message"]
        if any(sign in (done.stderr or "") for sign in OUT_OF_MEMORY):
            raise CheckpointProblem(f"converting the state_dict needed more than {memory_bytes} bytes of memory")
        raise CheckpointProblem(f"could not convert the rosinality state_dict: {tail[0]}")
