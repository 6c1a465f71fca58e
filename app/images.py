"""What an uploaded image is, decided by its content, and whether it fits a model.

The mapping rule mirrors `taming.data.to_square` and the identity screen mirrors `taming.data.screen`
(the API must not import taming/, which pulls in torch): a grey image cannot feed a colour model, the
shorter side must be at least the model's size, colour is converted to grey for a grey model. Images
too dark or too flat carry no identity; they are flagged, not rejected.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import BinaryIO

from PIL import Image, ImageStat

MIN_MEAN = 12.0  # taming.data.MIN_MEAN
MIN_STD = 8.0  # taming.data.MIN_STD
GREY_MODES = ("L", "I;16", "I", "1")
COLOUR_MODES = ("RGB", "RGBA", "P", "CMYK", "YCbCr")
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
    if img.mode in GREY_MODES:
        source_channels = 1
    elif img.mode in COLOUR_MODES:
        source_channels = 3
    else:
        raise ImageProblem(f"unsupported image mode {img.mode}")
    if source_channels == 1 and channels == 3:
        raise ImageProblem("grey image given to a colour model (it needs 3 channels)")
    if min(img.size) < size:
        raise ImageProblem(f"image of {img.size[0]}x{img.size[1]} is smaller than the model's {size}x{size}")
    return screen(_to_square(img, size, channels))


def _to_square(img: Image.Image, size: int, channels: int) -> Image.Image:
    img = img.convert("L" if channels == 1 else "RGB")
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def screen(img: Image.Image) -> str | None:
    """Why the image carries no identity (too dark, too flat), over all its channels, or None."""
    stat = ImageStat.Stat(img)
    n = len(stat.count) * stat.count[0]
    mean = sum(stat.sum) / n
    var = max(0.0, (sum(stat.sum2) - n * mean * mean) / max(1, n - 1))  # unbiased, as torch.std
    if mean < MIN_MEAN:
        return f"nearly black image (mean level {mean:.1f} of 255)"
    if var**0.5 < MIN_STD:
        return f"nearly uniform image (contrast {var**0.5:.1f} of 255)"
    return None
