"""Uploaded files of one request: check every cap and every image first, store only then.

Nothing half-written: a request whose files fail any check stores nothing, and a request that fails while
storing deletes what it had stored. The multipart parser has already spooled each file to a temporary
file; from there it is hashed and copied to storage in chunks.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, BinaryIO

from fastapi import UploadFile

from app import storage_keys, upload_store
from app.errors import ApiError
from app.images import ImageProblem, Inspected, inspect
from app.settings import Settings
from app.storage import Storage

CHUNK = 1 << 20
MAX_NAME = 255  # characters of an upload's file name (it is stored, and shown in reports)


@dataclass
class Incoming:
    field: str
    index: int
    upload: UploadFile
    sha256: str
    info: Inspected

    @property
    def name(self) -> str:
        return self.upload.filename or f"{self.field}-{self.index}"


def file_size(fileobj: BinaryIO) -> int:
    fileobj.seek(0, 2)
    size = fileobj.tell()
    fileobj.seek(0)
    return size


def sha256_of(fileobj: BinaryIO) -> str:
    digest = hashlib.sha256()
    fileobj.seek(0)
    for chunk in iter(lambda: fileobj.read(CHUNK), b""):
        digest.update(chunk)
    fileobj.seek(0)
    return digest.hexdigest()


def check_caps(groups: dict[str, list[UploadFile]], settings: Settings) -> int:
    """File count and per-file size, before any image is read -> the files' total bytes."""
    total = sum(len(files) for files in groups.values())
    if total > settings.max_files:
        raise ApiError(413, "too_many_files", f"{total} files; at most {settings.max_files} per request",
                       {"limit": settings.max_files, "count": total})
    for field, files in groups.items():
        for i, upload in enumerate(files):
            if "\x00" in (upload.filename or "") or len(upload.filename or "") > MAX_NAME:
                raise ApiError(422, "invalid_file_name", f"{field}[{i}]: a file name must not contain a NUL byte "
                               f"or exceed {MAX_NAME} characters", {"field": field, "index": i})
            size = file_size(upload.file)
            if size > settings.max_file_bytes:
                raise ApiError(413, "file_too_large",
                               f"{field}[{i}] ({upload.filename}) is {size} bytes; at most {settings.max_file_bytes}",
                               {"field": field, "index": i, "limit": settings.max_file_bytes})
            if size == 0:
                raise ApiError(422, "empty_file", f"{field}[{i}] ({upload.filename}) is empty",
                               {"field": field, "index": i})
    return sum(file_size(u.file) for files in groups.values() for u in files)


def hash_all(groups: dict[str, list[UploadFile]]) -> dict[tuple[str, int], str]:
    return {(field, i): sha256_of(u.file) for field, files in groups.items() for i, u in enumerate(files)}


def inspect_all(groups: dict[str, list[UploadFile]], hashes: dict[tuple[str, int], str], size: int, channels: int,
                settings: Settings) -> list[Incoming]:
    """Every image decoded and fitted to the model; one 422 naming every unusable file."""
    good: list[Incoming] = []
    problems: list[dict[str, Any]] = []
    for field, files in groups.items():
        for i, upload in enumerate(files):
            try:
                info = inspect(upload.file, size, channels, settings.max_pixels)
            except ImageProblem as exc:
                problems.append({"field": field, "index": i, "name": upload.filename, "reason": str(exc)})
                continue
            good.append(Incoming(field, i, upload, hashes[field, i], info))
    if problems:
        first = problems[0]
        message = f"{first['field']}[{first['index']}] ({first['name']}): {first['reason']}"
        if len(problems) > 1:
            message += f" (and {len(problems) - 1} more)"
        raise ApiError(422, "invalid_image", message, problems)
    return good


def store_all(storage: Storage, job_id: str, incoming: list[Incoming]) -> list[dict[str, Any]]:
    """Copy the files to `uploads/{job_id}/{field}/{i:04d}{ext}`; all or nothing."""
    entries: list[dict[str, Any]] = []
    try:
        for item in incoming:
            key = storage_keys.upload(job_id, item.field, item.index, item.info.ext)
            item.upload.file.seek(0)
            storage.put_file(key, item.upload.file)
            entries.append({"field": item.field, "key": key, "sha256": item.sha256, "name": item.name,
                            "excluded_reason": item.info.excluded_reason})
    except BaseException:
        upload_store.delete(storage, job_id)
        raise
    return entries
