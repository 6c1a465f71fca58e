"""A remember set sent as one .npz, checked from its headers before anything is decompressed in full.

A .npz is a zip of .npy arrays. Each member's declared size bounds what reading it can produce, so the sum is
checked against `Settings.max_remember_bytes` first (a zip bomb declares far more than it holds); the .npy
header gives dtype and shape without reading the data (object arrays, which need pickle, are refused); only
an array of another dtype than uint8 is then read, in chunks, to check that every value is a finite pixel
level in 0..255. Nothing here converts: the worker loads the set the way it always did (taming.data).
"""

from __future__ import annotations

import zipfile
from typing import IO, BinaryIO

import numpy as np

from app.errors import ApiError

CHUNK_VALUES = 1 << 20
NUMERIC_KINDS = "uif"


def _problem(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_remember_set", f"the {field} .npz {message}")


def _header(f: IO[bytes], field: str, member: str) -> tuple[tuple[int, ...], np.dtype]:
    try:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _fortran, dtype = read(f)
    except (ValueError, OSError, SyntaxError, TypeError, zipfile.BadZipFile):
        raise _problem(field, f"member {member} is not a readable .npy array") from None
    if dtype.hasobject or dtype.kind not in NUMERIC_KINDS:
        raise _problem(field, f"'{member[:-4]}' has dtype {dtype}; numbers only (object arrays are refused)")
    return tuple(int(d) for d in shape), dtype


def _check_levels(f: IO[bytes], dtype: np.dtype, count: int, field: str) -> None:
    """Every value of a non-uint8 image array finite and within 0..255, read a chunk at a time."""
    left = count
    while left > 0:
        n = min(left, CHUNK_VALUES)
        raw = f.read(n * dtype.itemsize)
        if len(raw) != n * dtype.itemsize:
            raise _problem(field, "'images' is shorter than its shape says")
        values = np.frombuffer(raw, dtype=dtype)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 255:
            raise _problem(field, "'images' holds values that are not pixel levels (NaN, infinite, or outside "
                           "0..255)")
        left -= n


def _check_images(shape: tuple[int, ...], size: int, channels: int, field: str) -> None:
    if len(shape) not in (3, 4) or shape[0] < 1:
        raise _problem(field, f"'images' must be [N, H, W] or [N, H, W, C] with N ≥ 1, not {list(shape)}")
    if len(shape) == 4 and shape[3] not in (1, 3):
        raise _problem(field, f"'images' has {shape[3]} channels; 1 (grey) or 3 (colour)")
    if min(shape[1], shape[2]) < size:
        raise _problem(field, f"images of {shape[1]}x{shape[2]} are smaller than the model's {size}x{size}")
    if channels == 3 and (len(shape) == 3 or shape[3] == 1):
        raise _problem(field, "holds grey images, but the model is a colour one (it needs 3 channels)")


def check_npz(fileobj: BinaryIO, size: int, channels: int, max_bytes: int, field: str = "remember") -> None:
    """Refuse (422, saying why) an .npz that is not a usable remember set of a `size`², `channels` model."""
    fileobj.seek(0)
    try:
        with zipfile.ZipFile(fileobj) as zf:
            infos = {i.filename: i for i in zf.infolist()}
            declared = sum(i.file_size for i in infos.values())
            if declared > max_bytes:
                raise _problem(field, f"declares {declared} bytes once decompressed; at most {max_bytes}")
            if "images.npy" not in infos:
                raise _problem(field, "has no 'images' array")
            with zf.open("images.npy") as f:
                shape, dtype = _header(f, field, "images.npy")
                _check_images(shape, size, channels, field)
                count = int(np.prod(shape, dtype=np.int64))
                if count * dtype.itemsize > infos["images.npy"].file_size:
                    raise _problem(field, "'images' is shorter than its shape says")
                if dtype != np.uint8:
                    _check_levels(f, dtype, count, field)
            if "identity.npy" in infos:
                with zf.open("identity.npy") as f:
                    id_shape, id_dtype = _header(f, field, "identity.npy")
                if id_dtype.kind not in "ui" or id_shape != shape[:1]:
                    raise _problem(field, f"'identity' must be {shape[0]} integers, one per image")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError):
        raise _problem(field, "is not a readable zip archive") from None
    finally:
        fileobj.seek(0)
