"""What an uploaded image is, decided by its content, and whether it fits a model.

Whether it fits and whether it carries an identity is rules/images.py, the rule the worker's loader applies too.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import BinaryIO

from PIL import Image

from rules.images import UnfitImage, screen, to_square

EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "PPM": ".pgm"}


class ImageProblem(ValueError):
    """Why an upload is not a usable image (the message is shown to the caller)."""


@dataclass
class Inspected:
    format: str
    ext: str
    width: int
    height: int
    excluded_reason: str | None


def sniff(head: bytes) -> str | None:
    """The format named by the first bytes: PNG, JPEG or PPM (binary or text PGM), else None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:2] in (b"P2", b"P5") and head[2:3].isspace():
        return "PPM"
    return None


def inspect(fileobj: BinaryIO, size: int, channels: int, max_pixels: int) -> Inspected:
    """Check one image fully (decoded to the last pixel) against a model of `size` and `channels`."""
    fileobj.seek(0)
    fmt = sniff(fileobj.read(16))
    if fmt is None:
        raise ImageProblem("not a PNG, JPEG or PGM image")
    fileobj.seek(0)
    with warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; here any bomb is an error.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(fileobj, formats=[fmt])
            width, height = img.size
            if width * height > max_pixels:
                raise ImageProblem(f"{width}x{height} pixels is more than the {max_pixels} allowed")
            img.verify()  # checksums and structure, without decoding
            fileobj.seek(0)
            img = Image.open(fileobj, formats=[fmt])
            img.load()  # a truncated file fails here
        except ImageProblem:
            raise
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            raise ImageProblem("too many pixels (decompression bomb)") from None
        except Exception as exc:  # Pillow raises many types for corrupt data
            raise ImageProblem(f"corrupt or truncated {fmt} image ({exc.__class__.__name__})") from None
    reason = fit(img, size, channels)
    return Inspected(fmt, EXTENSIONS[fmt], width, height, reason)


def fit(img: Image.Image, size: int, channels: int) -> str | None:
    """Raise if the image cannot be mapped to the model; else why it carries no identity (or None)."""
    try:
        return screen(to_square(img, size, channels))
    except UnfitImage as exc:
        raise ImageProblem(str(exc)) from None
