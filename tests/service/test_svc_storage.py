"""Both storage backends behave alike: local folder and S3 (on the moto endpoint)."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import httpx
import pytest

from app.settings import Settings
from app.storage import Storage, StorageError, get_storage


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return get_storage(Settings(var_dir=tmp_path))
    endpoint = request.getfixturevalue("s3_endpoint")
    store = get_storage(Settings(var_dir=tmp_path, storage_url=f"s3://b-{uuid.uuid4().hex[:10]}/pre",
                                 s3_endpoint_url=endpoint))
    store.ensure_bucket()  # type: ignore[attr-defined]
    return store


def test_round_trip(storage: Storage, tmp_path: Path) -> None:
    storage.put_bytes("reports/a.json", b"{}")
    storage.put_file("uploads/j/forget/0000.png", io.BytesIO(b"x" * 3_000_000))
    storage.put_file("uploads/j/holdout/0000.png", io.BytesIO(b"y"))
    assert storage.get_bytes("reports/a.json") == b"{}"
    assert storage.exists("uploads/j/forget/0000.png") and not storage.exists("uploads/j/nope")
    assert storage.list("uploads/j/") == ["uploads/j/forget/0000.png", "uploads/j/holdout/0000.png"]
    storage.download("uploads/j/forget/0000.png", tmp_path / "out")
    assert (tmp_path / "out").stat().st_size == 3_000_000
    storage.delete_prefix("uploads/j/")
    assert storage.list("uploads/") == [] and storage.list("reports/") == ["reports/a.json"]
    storage.delete("reports/a.json")
    with pytest.raises(KeyError):
        storage.get_bytes("reports/a.json")
    storage.check()


def test_presigned_urls(storage: Storage) -> None:
    storage.put_bytes("checkpoints/m/v1.safetensors", b"weights")
    url = storage.presigned_url("checkpoints/m/v1.safetensors")
    if url is None:
        return  # the local backend serves files through the API itself
    assert httpx.get(url).content == b"weights"


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs", "a//b", "a/../b", ""])
def test_unsafe_keys(storage: Storage, key: str) -> None:
    with pytest.raises(StorageError):
        storage.put_bytes(key, b"")
