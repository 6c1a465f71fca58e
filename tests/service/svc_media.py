"""Test inputs made in memory: images, a PNG bomb, a tiny taming-glow safetensors checkpoint."""

from __future__ import annotations

import io
import json
import random
import struct
import zlib

from PIL import Image


def png(size: int = 32, mode: str = "L", level: int | None = None, seed: int = 0) -> bytes:
    """A PNG of noise (carries 'identity'), or flat at `level` when given."""
    rng = random.Random(seed)
    img = Image.new(mode, (size, size))
    bands = 1 if mode == "L" else 3
    if level is None:
        data = [tuple(rng.randrange(40, 220) for _ in range(bands)) for _ in range(size * size)]
        img.putdata([d[0] for d in data] if bands == 1 else data)  # type: ignore[arg-type]
    else:
        img.paste(level if bands == 1 else (level,) * 3, (0, 0, size, size))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def jpeg(size: int = 32, seed: int = 1) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(png(size, "RGB", seed=seed))).save(out, "JPEG")
    return out.getvalue()


def pgm(size: int = 32) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(png(size))).save(out, "PPM")
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(side: int = 20000) -> bytes:
    """A 1-bit side×side PNG of zeros: ~50 KB on disk, 400 million pixels once decoded (never decoded here)."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed pixels
    parts = [comp.compress(row) for _ in range(side)]
    idat = b"".join(parts) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def checkpoint(img_size: int = 16, channels: int = 1, n_bits: int = 5) -> bytes:
    """A minimal taming-glow/1 safetensors file: one F32 tensor and the metadata the API reads."""
    config = {"in_channel": channels, "img_size": img_size, "n_flow": 2, "n_block": 2, "hidden": 8,
              "affine": False, "conv_lu": True, "n_bits": n_bits}
    header = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "__metadata__": {"format": "taming-glow/1", "config": json.dumps(config)}}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + struct.pack("<2f", 1.0, 2.0)


def glow_checkpoint(img_size: int = 16) -> bytes:
    """A real (untrained, seeded) tiny Glow checkpoint that the worker can load, for runs on a fake pipeline."""
    import tempfile
    from pathlib import Path

    import torch

    from taming.checkpoint import save_checkpoint
    from taming.glow import Glow, GlowConfig

    torch.manual_seed(0)
    model = Glow(GlowConfig(in_channel=1, img_size=img_size, n_flow=2, n_block=2, hidden=8, n_bits=5))
    with torch.no_grad():
        model(torch.rand(8, 1, img_size, img_size) - 0.5)  # data-dependent ActNorm init, as after training
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "glow.safetensors"
        save_checkpoint(model, path, data_hash="", parent="")
        return path.read_bytes()
