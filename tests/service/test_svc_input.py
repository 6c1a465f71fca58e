"""Bad input never gives a 500: each is a clear 4xx, and nothing is left in the database or storage."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select
from svc_api import Api
from svc_media import jpeg, pgm, png, png_bomb

from app.db import session_scope
from app.models import Job
from app.settings import Settings


def _nothing_written(api: Api) -> None:
    with session_scope(api.settings) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0
    assert api.storage.list("uploads/") == []


def _forget(*blobs: bytes) -> list[Any]:
    return [("forget", (f"f{i}.png", b, "image/png")) for i, b in enumerate(blobs)]


@pytest.fixture
def model(api: Api) -> dict[str, Any]:
    return api.register_model(size=16, channels=1)


TINY = png(16)
CASES = {
    "non-image": (_forget(b"hello, I am text, not a picture"), None, 422, "invalid_image"),
    "truncated png": (_forget(png(32)[:200]), None, 422, "invalid_image"),
    "png bomb": (_forget(png_bomb()), None, 422, "invalid_image"),
    "2000 files": ([("forget", (f"f{i}.png", TINY, "image/png")) for i in range(2000)], None, 413, "too_many_files"),
    "empty file": (_forget(b""), None, 422, "empty_file"),
    "no files": ([], None, 422, "no_images"),
    "malformed parameters": (_forget(png(32)), "{not json", 422, "invalid_parameters"),
    "unknown parameter": (_forget(png(32)), json.dumps({"deltaa": 3}), 422, "invalid_parameters"),
    "bad parameter value": (_forget(png(32)), json.dumps({"alpha": 7}), 422, "invalid_parameters"),
    "too small for model": (_forget(png(8)), None, 422, "invalid_image"),
    "one bad among good": (_forget(png(32), b"GIF89a....", png(32, seed=3)), None, 422, "invalid_image"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_job_input(api: Api, model: dict[str, Any], case: str) -> None:
    files, parameters, status, code = CASES[case]
    r = api.submit(model["id"], files=files, parameters=parameters)
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
    _nothing_written(api)


def test_wrong_model_id(api: Api) -> None:
    r = api.submit("0" * 32)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "model_not_found")
    _nothing_written(api)


def test_missing_form_fields_are_validation_errors(api: Api, model: dict[str, Any]) -> None:
    r = api.client.post("/v1/jobs", headers=api.h("operator"), data={"kind": "bogus"}, files=_forget(png(32)))
    body = r.json()["error"]
    assert r.status_code == 422 and body["code"] == "validation_error" and body["details"]
    _nothing_written(api)


def test_grey_image_for_colour_model_says_why(api: Api) -> None:
    model = api.register_model(size=16, channels=3)
    r = api.submit(model["id"], files=_forget(png(32, "L")))
    assert r.status_code == 422 and "grey image given to a colour model" in r.json()["error"]["message"]
    _nothing_written(api)


def test_accepted_formats_and_identity_flags(api: Api, model: dict[str, Any]) -> None:
    files = [("forget", ("a.png", png(32, "RGB"), "image/png")), ("forget", ("b.jpg", jpeg(32), "image/jpeg")),
             ("forget", ("c.pgm", pgm(32), "image/x-portable-graymap")),
             ("forget", ("dark.png", png(32, level=3), "image/png")),
             ("holdout", ("flat.png", png(32, level=128), "image/png"))]
    r = api.submit(model["id"], files=files)
    assert r.status_code == 202, r.text
    reasons = [u["excluded_reason"] for u in r.json()["uploads"]]
    assert reasons[:3] == [None, None, None]
    assert "nearly black" in reasons[3] and "nearly uniform" in reasons[4]
    keys = api.storage.list(f"uploads/{r.json()['id']}/")
    assert [k.rsplit("/", 2)[-2:] for k in keys] == [["forget", "0000.png"], ["forget", "0001.jpg"],
                                                      ["forget", "0002.pgm"], ["forget", "0003.png"],
                                                      ["holdout", "0000.png"]]


@pytest.fixture
def small_api(tmp_path: Any) -> Iterator[Api]:
    with Api(Settings(var_dir=tmp_path / "v", max_request_bytes=60_000, max_file_bytes=20_000)) as api:
        yield api


def test_oversize_body_refused_by_content_length(small_api: Api) -> None:
    model = small_api.register_model()
    r = small_api.submit(model["id"], files=_forget(*(png(100, seed=i) for i in range(8))))
    assert (r.status_code, r.json()["error"]["code"]) == (413, "request_too_large")
    _nothing_written(small_api)


def test_oversize_body_refused_while_streaming(small_api: Api) -> None:
    boundary = "b0undary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="forget"; filename="x.png"\r\n'
            "Content-Type: image/png\r\n\r\n").encode()

    def body() -> Iterator[bytes]:  # no Content-Length: sent chunked, so only counting can stop it
        yield head
        for _ in range(100):
            yield b"\0" * 1000

    r = small_api.client.post("/v1/jobs", headers={**small_api.h("operator"),
                              "Content-Type": f"multipart/form-data; boundary={boundary}"}, content=body())
    assert r.status_code == 413, r.text
    _nothing_written(small_api)


def test_oversize_file(small_api: Api) -> None:
    model = small_api.register_model()
    big = png(150, seed=5)
    assert 20_000 < len(big) < 60_000
    r = small_api.submit(model["id"], files=_forget(big))
    assert (r.status_code, r.json()["error"]["code"]) == (413, "file_too_large")
    _nothing_written(small_api)


def test_bad_model_uploads(api: Api) -> None:
    cases = [
        ([("checkpoint", ("c", b"not a checkpoint", "x")), ("remember", ("r.png", png(16), "image/png"))],
         "invalid_checkpoint"),
        ([("checkpoint", ("c", b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + b" " * 14, "x")),
          ("remember", ("r.png", png(16), "image/png"))], "invalid_checkpoint"),
    ]
    for files, code in cases:
        r = api.client.post("/v1/models", headers=api.h("admin"), data={"name": "m"}, files=files)
        assert (r.status_code, r.json()["error"]["code"]) == (422, code), r.text
    assert api.storage.list("") == []
