"""Image sets: folders and .npz, square resizing, deterministic splits, quantization, screening."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from taming.data import DataError, dequantize, load_faces, quantize, screen

ATT = Path(__file__).resolve().parents[1] / "data" / "att_faces.npz"


def test_att_npz_loads_square_with_identities_and_splits_deterministically() -> None:
    faces = load_faces(ATT, 32, 1)
    assert faces.images.shape == (400, 1, 32, 32) and faces.images.dtype == torch.uint8
    train = faces.select(list(range(35)), slice(0, 7))
    held = faces.select(list(range(35)), slice(7, 10))
    unseen = faces.select(list(range(35, 40)))
    assert (len(train), len(held), len(unseen)) == (245, 105, 50)
    assert set(train.sha256).isdisjoint(held.sha256)
    assert sorted(set(train.image_index.tolist())) == list(range(7))
    again = load_faces(ATT, 32, 1).select(list(range(35)), slice(0, 7))
    assert torch.equal(again.images, train.images) and again.data_hash() == train.data_hash()


def test_identity_folders_and_flat_folders(tmp_path: Path) -> None:
    for who in ("alice", "bob"):
        (tmp_path / "people" / who).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((40, 50), 60 * i + 50, dtype=np.uint8)).save(tmp_path / "people" / who / f"{i}.png")
    people = load_faces(tmp_path / "people", 16, 1)
    assert people.images.shape == (4, 1, 16, 16)
    assert people.identity.tolist() == [0, 0, 1, 1]
    flat = load_faces(tmp_path / "people" / "alice", 16, 1)
    assert flat.identity.tolist() == [-1, -1]
    with pytest.raises(DataError, match="colour model"):
        load_faces(tmp_path / "people", 16, 3)


def test_quantize_and_dequantize_stay_in_range() -> None:
    images = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    x = quantize(images, 5)
    assert x.min() == -0.5 and x.max() == pytest.approx(0.5 - 1 / 32)
    assert len(torch.unique(x)) == 32
    y = dequantize(x, 5, torch.Generator().manual_seed(0))
    assert ((y - x) >= 0).all() and ((y - x) < 1 / 32).all()


def test_screen_names_images_without_identity() -> None:
    gen = torch.Generator().manual_seed(0)
    face = (torch.rand(1, 1, 16, 16, generator=gen) * 200 + 30).to(torch.uint8)
    black = torch.full((1, 1, 16, 16), 3, dtype=torch.uint8)
    flat = torch.full((1, 1, 16, 16), 128, dtype=torch.uint8)
    reasons = screen(torch.cat([face, black, flat]))
    assert reasons[0] is None and "black" in str(reasons[1]) and "uniform" in str(reasons[2])



def test_a_16_bit_photo_maps_like_its_8_bit_version_in_the_loader_and_the_upload_check() -> None:
    import io

    from app.images import inspect
    from taming.data import to_square

    rng = np.random.default_rng(0)
    grey8 = rng.integers(30, 220, size=(40, 48), dtype=np.uint8)
    png16 = io.BytesIO()
    Image.fromarray(grey8.astype(np.uint16) * 257).save(png16, format="PNG")  # 16 bits per pixel
    png16.seek(0)
    with Image.open(png16) as img:
        assert img.mode.startswith("I")
        deep = to_square(img, 32, 1).astype(int)
    shallow = to_square(Image.fromarray(grey8), 32, 1).astype(int)
    assert np.abs(deep - shallow).max() <= 1  # before the rule, convert("L") clipped it to white: "uniform"
    assert inspect(png16, 32, 1, max_pixels=10**6).excluded_reason is None
