"""Object storage behind one small interface: a local folder (embedded) or S3 via boto3 (distributed).

Keys are relative paths such as `uploads/{job_id}/forget/0000.png` (docs/CONTRACT.md lists them all).
Files are copied in chunks, never read whole into memory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from app.settings import Settings

CHUNK = 1 << 20


class StorageError(RuntimeError):
    pass


class Storage(Protocol):
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def put_file(self, key: str, fileobj: BinaryIO) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def download(self, key: str, path: str | Path) -> None: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def list(self, prefix: str) -> list[str]: ...
    def presigned_url(self, key: str) -> str | None: ...
    def check(self) -> None: ...


def _clean(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts[:-1]) or parts[-1] in (".", ".."):
        raise StorageError(f"unsafe storage key {key!r}")
    return key


class LocalStorage:
    """Objects as files under one folder; writes go to a temporary file first, then are renamed."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / _clean(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write(key, lambda f: f.write(data))

    def put_file(self, key: str, fileobj: BinaryIO) -> None:
        self._write(key, lambda f: shutil.copyfileobj(fileobj, f, CHUNK))

    def _write(self, key: str, fill: Any) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                fill(f)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None

    def download(self, key: str, path: str | Path) -> None:
        try:
            shutil.copyfile(self.path(key), path)
        except FileNotFoundError:
            raise KeyError(key) from None

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        for key in self.list(prefix):
            self.delete(key)
        folder = self.root / prefix.rstrip("/")
        if prefix.endswith("/") and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)

    def list(self, prefix: str) -> list[str]:
        base = self.root / (prefix.rsplit("/", 1)[0] if "/" in prefix else "")
        if not base.is_dir():
            return []
        keys = (p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(prefix) and not Path(k).name.startswith(".tmp-"))

    def presigned_url(self, key: str) -> str | None:
        return None  # served by the API itself

    def check(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"{self.root} is not writable")


class S3Storage:
    """Objects in one bucket (optionally under a prefix); downloads are handed out as presigned URLs."""

    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None, region: str, presign_seconds: int) -> None:
        import boto3  # only the S3 backend pays for importing boto3

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.presign_seconds = presign_seconds
        self.client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region)

    def _key(self, key: str) -> str:
        return self.prefix + _clean(key)

    def ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_file(self, key: str, fileobj: BinaryIO) -> None:
        # upload_fileobj reads in parts (multipart upload above 8 MB): the file is never whole in memory.
        self.client.upload_fileobj(fileobj, self.bucket, self._key(key))

    def get_bytes(self, key: str) -> bytes:
        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read())
        except self.client.exceptions.NoSuchKey:
            raise KeyError(key) from None

    def download(self, key: str, path: str | Path) -> None:
        if not self.exists(key):
            raise KeyError(key)
        self.client.download_file(self.bucket, self._key(key), str(path))

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError:
            return False

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> None:
        keys = self.list(prefix)
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": self._key(k)} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            keys.extend(obj["Key"][len(self.prefix) :] for obj in page.get("Contents", []))
        return sorted(keys)

    def presigned_url(self, key: str) -> str | None:
        return str(self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=self.presign_seconds
        ))

    def check(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)


def get_storage(settings: Settings) -> Storage:
    """The storage backend the settings name (one instance per configuration)."""
    return _storage(settings.storage_url, settings.s3_endpoint_url, settings.s3_region, settings.presign_seconds)


@lru_cache(maxsize=16)
def _storage(url: str, endpoint: str | None, region: str, presign_seconds: int) -> Storage:
    if url.startswith("s3://"):
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        return S3Storage(bucket, prefix, endpoint, region, presign_seconds)
    return LocalStorage(url.removeprefix("file://"))
