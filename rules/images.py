"""How an image maps to a model's input and when it carries no identity: one rule for the API and the library.

Torch- and numpy-free, so that the API checks an upload (app/images.py) with the very rule the worker's loader
applies (taming/data.py): a grey image cannot feed a colour model, the shorter side must be at least the model's
size, 16-bit grey is scaled to 8 bits (not clipped), colour becomes grey for a grey model, then the shorter side
is resized to the model's size and the centre cropped. Images too dark or too flat carry no identity
(DESIGN.md section 4, step 9): they are flagged, not rejected.
"""

from __future__ import annotations

from PIL import Image, ImageStat

# Below these (on 0..255) an image is too dark or too flat to carry a face.
MIN_MEAN = 12.0
MIN_STD = 8.0
GREY_MODES = ("L", "1", "I", "I;16", "I;16B", "I;16L")
COLOUR_MODES = ("RGB", "RGBA", "P", "CMYK", "YCbCr")


class UnfitImage(ValueError):
    """Why an image cannot feed a model (one line a person can act on)."""


def to_square(img: Image.Image, size: int, channels: int) -> Image.Image:
    """The image as the model sees it: mode "L" or "RGB", size x size; UnfitImage when it cannot be."""
    if img.mode in GREY_MODES:
        source_channels = 1
    elif img.mode in COLOUR_MODES:
        source_channels = 3
    else:
        raise UnfitImage(f"unsupported image mode {img.mode}")
    if source_channels == 1 and channels == 3:
        raise UnfitImage("grey image given to a colour model (it needs 3 channels)")
    if min(img.size) < size:
        raise UnfitImage(f"image of {img.size[0]}x{img.size[1]} is smaller than the model's {size}x{size}")
    img = _eight_bit(img).convert("L" if channels == 1 else "RGB")
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def _eight_bit(img: Image.Image) -> Image.Image:
    """Integer grey modes scaled to 0..255: Pillow's convert("L") clips them, so a 16-bit photo turns white."""
    if not img.mode.startswith("I"):
        return img
    top = img.getextrema()[1]
    if not isinstance(top, int | float) or top <= 255:
        return img
    scale = 255 / (65535 if top <= 65535 else top)
    return img.point(lambda v: v * scale)


def reason_from(mean: float, std: float) -> str | None:
    """Why an image of this mean level and contrast (0..255) carries no identity, or None if it may."""
    if mean < MIN_MEAN:
        return f"nearly black image (mean level {mean:.1f} of 255)"
    if std < MIN_STD:
        return f"nearly uniform image (contrast {std:.1f} of 255)"
    return None


def screen(img: Image.Image) -> str | None:
    """Why the image carries no identity (too dark, too flat), over all its channels, or None."""
    stat = ImageStat.Stat(img)
    n = len(stat.count) * stat.count[0]
    mean = sum(stat.sum) / n
    var = max(0.0, (sum(stat.sum2) - n * mean * mean) / max(1, n - 1))  # unbiased, as torch.std
    return reason_from(mean, var**0.5)
