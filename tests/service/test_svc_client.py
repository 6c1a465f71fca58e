"""Checkpoint uploads (safetensors header, rosinality conversion), verify, and the `taming submit` client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from svc_api import Api, CannedVerifier
from svc_media import checkpoint, png

import app.checkpoints
from app.client import ApiClient, ApiFailure, expand
from app.errors import ApiError
from app.submit import outcome, parse_params


def test_rosinality_state_dict_is_converted(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []

    def fake_convert(state: Path, args: Path, out: Path, *bounds: float) -> None:  # the real one: a torch child
        calls.append(json.loads(args.read_text()))
        out.write_bytes(checkpoint(16, 1))

    monkeypatch.setattr(app.registry, "convert_rosinality", fake_convert)
    files = [("checkpoint", ("model.pt", b"PK\x03\x04 a torch zip", "application/octet-stream")),
             ("args", ("args.json", json.dumps({"n_flow": 2, "img_size": 16}).encode(), "application/json")),
             ("remember", ("r.png", png(16), "image/png"))]
    r = api.client.post("/v1/models", headers=api.h("admin"), data={"name": "ros"}, files=files)
    assert r.status_code == 201, r.text
    assert calls == [{"n_flow": 2, "img_size": 16}] and r.json()["image_size"] == 16


def test_conversion_failure_is_a_422(tmp_path: Path) -> None:
    with pytest.raises(app.checkpoints.CheckpointProblem):
        app.checkpoints.convert_rosinality(tmp_path / "missing.pt", tmp_path / "args.json", tmp_path / "o", 60, 2**33)


def test_wrong_format_metadata(api: Api) -> None:
    blob = checkpoint().replace(b"taming-glow/1", b"taming-glow/9")
    files = [("checkpoint", ("c", blob, "x")), ("remember", ("r.png", png(16), "image/png"))]
    r = api.client.post("/v1/models", headers=api.h("admin"), data={"name": "m"}, files=files)
    assert r.status_code == 422 and "taming-glow/9" in r.json()["error"]["message"]


def test_npz_remember_set(api: Api) -> None:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, images=np.zeros((2, 16, 16), dtype=np.uint8))
    files = [("checkpoint", ("c", checkpoint(), "x")), ("remember", ("r.npz", buf.getvalue(), "x"))]
    r = api.client.post("/v1/models", headers=api.h("admin"), data={"name": "npz"}, files=files)
    assert r.status_code == 201, r.text
    assert api.storage.list(f"remember/{r.json()['id']}/") == [f"remember/{r.json()['id']}/remember.npz"]


def test_a_held_out_remember_set_is_stored_beside_the_remember_set(api: Api) -> None:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, images=np.zeros((2, 16, 16), dtype=np.uint8))
    files = [("checkpoint", ("c", checkpoint(), "x")), ("remember", ("r.png", png(16), "image/png")),
             ("remember_holdout", ("held.npz", buf.getvalue(), "x"))]
    r = api.client.post("/v1/models", headers=api.h("admin"), data={"name": "held"}, files=files)
    assert r.status_code == 201, r.text
    model_id = r.json()["id"]
    assert r.json()["remember_holdout"] is True
    assert api.storage.list(f"remember/{model_id}/holdout/") == [f"remember/{model_id}/holdout/remember_holdout.npz"]
    assert api.register_model()["remember_holdout"] is False  # optional
    files[2] = ("remember_holdout", ("held.npz", b"PK\x03\x04 not a zip", "x"))
    r = api.client.post("/v1/models", headers=api.h("admin"), data={"name": "bad"}, files=files)
    assert r.status_code == 422 and "remember_holdout" in r.json()["error"]["message"]
    held = [k for k in api.storage.list("remember/") if "/holdout/" in k]
    assert held == [f"remember/{model_id}/holdout/remember_holdout.npz"]


def test_verify_answers_a_verdict_per_image_and_for_the_set(api: Api) -> None:
    verifier = CannedVerifier(bpd=5.0)  # d = (5 - 4) / 0.5 = +2: at or past the threshold
    api.app.state.verifier = verifier
    model = api.register_model()
    files = [("images", ("me.png", png(32), "image/png")), ("images", ("dark.png", png(32, level=3), "image/png"))]
    r = api.client.post("/v1/verify", headers=api.h("auditor"), data={"model_id": model["id"]}, files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["reached"] is True and body["counted"] == 1 and body["threshold"] == 4.0
    assert body["version"] == 1 and body["remember"]["source"] == "reference_set"
    me, dark = body["images"]
    assert (me["name"], me["d"], me["reached"], me["counted"]) == ("me.png", 2.0, True, True)
    assert dark["counted"] is False and "black" in dark["excluded_reason"]
    sent = verifier.requests[0]
    assert (sent["version"], sent["delta"], sent["epsilon"]) == (1, 4.0, None)
    assert [i["counted"] for i in sent["images"]] == [True, False]
    assert sent["remember_keys"] == api.storage.list(f"remember/{model['id']}/")
    assert not Path(sent["images"][0]["path"]).exists()  # the uploads' copies are gone once answered


def test_verify_not_forgotten_and_bad_parameters(api: Api) -> None:
    api.app.state.verifier = CannedVerifier(bpd=2.0)  # at μ_R: far short of the threshold
    model = api.register_model()
    files = [("images", ("me.png", png(32), "image/png"))]
    r = api.client.post("/v1/verify", headers=api.h("auditor"), data={"model_id": model["id"], "delta": "2"},
                        files=files)
    assert r.status_code == 200 and r.json()["reached"] is False and r.json()["delta"] == 2.0
    for data, code in (({"delta": "0"}, "invalid_parameters"), ({"version": "7"}, "version_not_found"),
                       ({"epsilon": "-1"}, "validation_error")):
        r = api.client.post("/v1/verify", headers=api.h("auditor"), data={"model_id": model["id"], **data},
                            files=files)
        assert r.status_code in (404, 422) and r.json()["error"]["code"] == code, r.text


# A stand-in child speaking the verify process's protocol: ready, then one answer per request line.
ECHO_CHILD = """
import json, sys, time
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    time.sleep(req.get("sleep", 0))
    print(json.dumps({"id": req["id"], "ok": True, "pid": __import__("os").getpid()}), flush=True)
"""


def test_the_verify_process_is_restarted_after_dying_or_overrunning(tmp_path: Path) -> None:
    import sys

    from app.settings import Settings
    from app.verify import Verifier

    verifier = Verifier(Settings(var_dir=tmp_path), command=[sys.executable, "-c", ECHO_CHILD])
    try:
        first = verifier.ask({}, timeout=30)
        assert first["ok"] and verifier.ask({}, timeout=30)["pid"] == first["pid"]  # warm: the same process
        assert verifier._proc is not None
        verifier._proc.kill()
        verifier._proc.wait()
        second = verifier.ask({}, timeout=30)
        assert second["ok"] and second["pid"] != first["pid"]
        with pytest.raises(ApiError) as err:
            verifier.ask({"sleep": 30}, timeout=0.5)
        assert (err.value.status, err.value.code) == (503, "verify_timeout")
        assert verifier._proc is None  # killed: a stuck computation does not hold up the next caller
        assert verifier.ask({}, timeout=30)["ok"]
    finally:
        verifier.close()


def test_submit_client_and_exit_status(api: Api, tmp_path: Path) -> None:
    model = api.register_model()
    (tmp_path / "imgs").mkdir()
    for i in range(2):
        (tmp_path / "imgs" / f"{i}.png").write_bytes(png(32, seed=i))
    (tmp_path / "imgs" / "notes.txt").write_text("ignored")
    api.client.headers.clear()
    client = ApiClient("http://testserver", api.keys["operator"], http=api.client)
    job = client.submit("forget_identity", model["id"], "t", {"forget": expand([tmp_path / "imgs"])},
                        parse_params(("delta=3", "forget_loss=scale_free")))
    assert job["parameters"]["delta"] == 3 and job["parameters"]["forget_loss"] == "scale_free"
    assert len(job["uploads"]) == 2
    assert outcome(client, job) == 4  # still queued: not a success (the timed-out status)
    with pytest.raises(ApiFailure, match="no model"):
        client.submit("forget_identity", "x" * 32, "t", {"forget": expand([tmp_path / "imgs"])})
