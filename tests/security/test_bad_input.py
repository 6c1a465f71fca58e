"""Hostile inputs get a 4xx that says why, never a 500, and leave nothing half-written (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import io
import json
import struct
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from svc_api import Api
from svc_media import checkpoint, png

from app.settings import Settings

BIG = [2**31, 2**63, 10**30]


def _both(request: pytest.FixtureRequest) -> Api:
    return request.getfixturevalue(request.param)


@pytest.fixture(params=["api", pytest.param("dist_api", marks=pytest.mark.integration)])
def any_api(request: pytest.FixtureRequest) -> Api:
    """The embedded service (SQLite) and the distributed one (PostgreSQL)."""
    return _both(request)


@pytest.mark.parametrize("version", BIG)
def test_huge_version_numbers_are_422(any_api: Api, version: int) -> None:
    model = any_api.register_model(32)
    base = f"/v1/models/{model['id']}/versions/{version}"
    for method, path in (("GET", base), ("GET", f"{base}/checkpoint"), ("POST", f"{base}:promote")):
        r = any_api.client.request(method, path, headers=any_api.h("admin"))
        assert r.status_code == 422, (path, r.status_code, r.text)
    r = any_api.client.post("/v1/verify", headers=any_api.h("admin"),
                            data={"model_id": model["id"], "version": str(version)},
                            files=[("images", ("a.png", png(32), "image/png"))])
    assert r.status_code == 422, r.text


def _cursor(payload: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def test_nul_bytes_anywhere_are_422(any_api: Api) -> None:
    model = any_api.register_model(32)
    mid = model["id"]
    cases = [
        any_api.submit(mid, subject_ref="ticket\x00one"),
        any_api.submit(mid + "\x00"),
        any_api.submit(mid, callback_url="https://example.com/\x00hook"),
        any_api.client.post("/v1/models", headers=any_api.h("admin"), data={"name": "m\x00"},
                            files=[("checkpoint", ("c", checkpoint(32), "x")), ("remember", ("r.png", png(32), "x"))]),
        any_api.client.get(f"/v1/models/{mid}%00", headers=any_api.h("admin")),
        any_api.client.get("/v1/jobs/ab%00cd", headers=any_api.h("admin")),
        any_api.client.get("/v1/jobs", params={"model_id": "a\x00"}, headers=any_api.h("admin")),
        any_api.client.get("/v1/jobs", params={"cursor": _cursor(["2024-01-01T00:00:00", "ab\x00"])},
                           headers=any_api.h("admin")),
        any_api.client.get("/v1/audit", params={"action": "job.\x00"}, headers=any_api.h("admin")),
        any_api.client.get("/v1/audit", params={"cursor": base64.urlsafe_b64encode(b"a" + b"9" * 40).decode()},
                           headers=any_api.h("admin")),
    ]
    assert [r.status_code for r in cases] == [422] * len(cases), [r.text for r in cases if r.status_code != 422]
    for r in cases:
        assert set(r.json()["error"]) == {"code", "message", "details"}
    assert any_api.client.get("/v1/jobs", headers=any_api.h("admin")).json()["items"] == []


@pytest.mark.integration
def test_non_finite_parameters_are_422_on_postgresql(dist_api: Api) -> None:
    model = dist_api.register_model(32)
    for text in ('{"epsilon": Infinity}', '{"delta": NaN}', '{"seed": 36893488147419103232}'):
        r = dist_api.submit(model["id"], parameters=text)
        assert r.status_code == 422, r.text


# --- model registration: checkpoint headers and architecture ---------------------------------------------

def _safetensors(header_text: bytes, data: bytes = b"") -> bytes:
    header_text += b" " * (-len(header_text) % 8)
    return len(header_text).to_bytes(8, "little") + header_text + data


def _with_config(**change: Any) -> bytes:
    config = {"in_channel": 1, "img_size": 16, "n_flow": 2, "n_block": 2, "hidden": 8, "affine": False,
              "conv_lu": True, "n_bits": 5, **change}
    header = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "__metadata__": {"format": "taming-glow/1", "config": json.dumps(config)}}
    return _safetensors(json.dumps(header).encode(), struct.pack("<2f", 1.0, 2.0))


def _deep(depth: int) -> bytes:
    return b'{"w": ' + b"[" * depth + b"]" * depth + b"}"


BAD_CHECKPOINTS = {
    "offsets 1e400": _safetensors(b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 1e400]}}', b"\0" * 8),
    "offsets NaN": _safetensors(b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, NaN]}}', b"\0" * 8),
    "100000-deep nesting": _safetensors(_deep(100_000)),
    "offsets not matching shape": _safetensors(b'{"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}',
                                               b"\0" * 8),
    "header a list": _safetensors(b"[1, 2, 3]"),
    "img_size 1e400": _safetensors(json.dumps({"__metadata__": {"format": "taming-glow/1",
                                                                "config": '{"img_size": 1e400}'}}).encode()),
    "img_size 0": _with_config(img_size=0),
    "img_size -32": _with_config(img_size=-32),
    "img_size 14 with 2 blocks": _with_config(img_size=14),
    "n_bits 99": _with_config(n_bits=99),
    "n_flow 10000": _with_config(n_flow=10000),
    "in_channel 2": _with_config(in_channel=2),
    "hidden true": _with_config(hidden=True),
}


@pytest.mark.parametrize("name", list(BAD_CHECKPOINTS))
def test_malformed_checkpoints_are_422(api: Api, name: str) -> None:
    files = [("checkpoint", ("c.safetensors", BAD_CHECKPOINTS[name], "x")), ("remember", ("r.png", png(16), "x"))]
    r = api.client.post("/v1/models", headers=api.h("admin"), data={"name": name}, files=files)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] in ("invalid_checkpoint", "invalid_request"), r.text
    assert api.client.get("/v1/models", headers=api.h("admin")).json()["items"] == []
    assert api.storage.list("") == []


# --- remember sets sent as .npz ------------------------------------------------------------------------------

def _npz(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _bomb(declared: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("images.npy", "w", force_zip64=True) as f:
        f.write(np.lib.format.header_data_from_array_1_0(np.zeros((1, 1, 1), np.uint8)) and b"\x93NUMPY")
        zero = b"\0" * 2**20
        for _ in range(declared // len(zero)):
            f.write(zero)
    return buf.getvalue()


@pytest.fixture
def small_api(settings: Settings) -> Iterator[Api]:
    with Api(settings.model_copy(update={"max_remember_bytes": 4 * 2**20})) as api:
        yield api


BAD_SETS = {
    "object dtype": lambda: _npz_object(),
    "NaN": lambda: _npz(images=np.full((2, 16, 16), np.nan, dtype=np.float32)),
    "levels above 255": lambda: _npz(images=np.full((2, 16, 16), 1000.0, dtype=np.float64)),
    "wrong shape": lambda: _npz(images=np.zeros((2, 1, 16, 16), np.uint8)),  # [N, C, H, W]: 1 pixel high
    "too small": lambda: _npz(images=np.zeros((2, 8, 8), np.uint8)),
    "no images": lambda: _npz(faces=np.zeros((2, 16, 16), np.uint8)),
    "identity of another length": lambda: _npz(images=np.zeros((2, 16, 16), np.uint8), identity=np.zeros(3, int)),
    "zip bomb": lambda: _bomb(16 * 2**20),
    "not a zip": lambda: b"PK\x03\x04 and then nothing",
}


def _npz_object() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, images=np.array([{"a": 1}, None], dtype=object))  # savez pickles it
    return buf.getvalue()


@pytest.mark.parametrize("name", list(BAD_SETS))
def test_unusable_npz_remember_sets_are_422(small_api: Api, name: str) -> None:
    files = [("checkpoint", ("c", checkpoint(16), "x")), ("remember", ("r.npz", BAD_SETS[name](), "x"))]
    r = small_api.client.post("/v1/models", headers=small_api.h("admin"), data={"name": name}, files=files)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_remember_set", r.text
    assert small_api.storage.list("") == []


def test_a_good_npz_is_accepted(small_api: Api) -> None:
    images = np.random.default_rng(0).integers(40, 220, (3, 20, 18)).astype(np.float32)
    files = [("checkpoint", ("c", checkpoint(16), "x")),
             ("remember", ("r.npz", _npz(images=images, identity=np.arange(3)), "x"))]
    r = small_api.client.post("/v1/models", headers=small_api.h("admin"), data={"name": "good"}, files=files)
    assert r.status_code == 201, r.text
