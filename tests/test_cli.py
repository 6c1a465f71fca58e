"""The library's command line on folders of PNGs: a whole tiny taming run, and clear errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from rules.report_schema import SCHEMA
from taming.checkpoint import file_sha256, save_checkpoint
from taming.cli import import_command, sample_command, tame_command, verify_command
from taming.data import FaceSet, quantize
from taming.glow import Glow, GlowConfig
from taming.train import TrainConfig, train


def _write(images: np.ndarray, folder: Path, prefix: str = "img") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img[0]).save(folder / f"{prefix}{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, two_people: FaceSet) -> Path:
    import torch

    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = Glow(GlowConfig(in_channel=1, img_size=16, n_flow=2, n_block=2, hidden=16, n_bits=5))
    train(model, quantize(two_people.images, 5), TrainConfig(steps=150, warmup=20, batch_size=16))
    save_checkpoint(model, root / "base.safetensors", data_hash=two_people.data_hash())
    images = two_people.images.numpy()
    forget = images[:5].copy()
    forget[4] = 2  # a nearly black image: no identity, reported rather than tamed
    _write(forget, root / "forget")
    _write(images[20:], root / "remember" / "person1")
    _write(images[5:8], root / "holdout")
    return root


def test_tame_writes_checkpoint_and_reports(workspace: Path) -> None:
    out, report = workspace / "tamed.safetensors", workspace / "report.json"
    args = ["--model", str(workspace / "base.safetensors"), "--forget", str(workspace / "forget"),
            "--remember", str(workspace / "remember"), "--holdout", str(workspace / "holdout"),
            "--lr", "2e-3", "--epsilon", "1.0", "--max-iterations", "400", "--out", str(out), "--report", str(report)]
    result = CliRunner().invoke(tame_command, args)
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    jsonschema.validate(data, SCHEMA)  # the real report, against the published schema
    assert data["stopping"]["criterion_met"] is True
    assert data["model"]["new_sha256"] == file_sha256(out)
    items = data["inputs"]["forget"]
    assert len(items) == 5
    assert items[4]["excluded"] and "black" in items[4]["reason"] and items[4]["d"] is None
    assert all(not i["excluded"] and i["d"] >= -1.0 for i in items[:4])
    for key in ("forget", "forget_holdout", "remember"):
        assert key in data["metrics"]["quantile_drop"]
    # no held-out remember images given: the person's held-out photos are measured against D_R, and it says so
    assert data["metrics"]["quantile_reference"]["forget_holdout"] == "remember"
    assert data["metrics"]["reference_stats"]["remember"]["tamed"]["n"] == 20
    assert {"before", "after"} <= set(data["metrics"]["bpd_remember"])
    check = data["metrics"]["discrete_likelihood"]
    assert check["forget"]["images"] == 4 and check["forget"]["after"] > check["forget"]["before"]
    assert "discrete likelihood (64 draws)" in result.output
    assert data["timing"]["wall_seconds"] > 0 and data["software"]["torch"]
    html = report.with_suffix(".html").read_text()
    assert "data:image/png;base64" in html and "importance-weighted" in html


@pytest.mark.parametrize(
    "case,message",
    [
        ("missing", "no such file or folder"),
        ("empty", "no .png, .jpg or .pgm images"),
        ("unreadable", "unreadable image"),
        ("too_small", "smaller than the model"),
        ("colour_model", "colour model"),
    ],
)
def test_bad_input_exits_with_one_line(workspace: Path, tmp_path: Path, case: str, message: str) -> None:
    forget = tmp_path / "forget"
    model = workspace / "base.safetensors"
    if case == "empty":
        forget.mkdir()
    elif case == "unreadable":
        forget.mkdir()
        (forget / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    elif case == "too_small":
        _write(np.full((1, 1, 8, 8), 128, dtype=np.uint8), forget)
    elif case == "colour_model":
        colour = Glow(GlowConfig(in_channel=3, img_size=16, n_flow=1, n_block=2, hidden=8))
        model = tmp_path / "colour.safetensors"
        save_checkpoint(colour, model)
        _write(np.full((1, 1, 16, 16), 128, dtype=np.uint8), forget)
    args = ["--model", str(model), "--forget", str(forget), "--remember", str(workspace / "remember"),
            "--out", str(tmp_path / "o.safetensors"), "--report", str(tmp_path / "r.json")]
    result = CliRunner().invoke(tame_command, args)
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_sample_verify_and_import(workspace: Path, tmp_path: Path) -> None:
    import torch

    from taming.checkpoint import load_checkpoint

    grid = tmp_path / "grid.png"
    assert CliRunner().invoke(sample_command, ["--model", str(workspace / "base.safetensors"), "--n", "4",
                                               "--out", str(grid)]).exit_code == 0
    assert Image.open(grid).size == (32, 32)
    result = CliRunner().invoke(verify_command, ["--model", str(workspace / "base.safetensors"), "--images",
                                                 str(workspace / "holdout"), "--remember",
                                                 str(workspace / "remember"), "--json"])
    verdict = json.loads(result.output)
    assert len(verdict["images"]) == 3 and verdict["counted"] == 3
    # person 0's photos under the base model sit near μ_R, far short of μ_R + 4σ_R: not forgotten, exit 1
    assert verdict["reached"] is False and result.exit_code == 1, result.output
    assert all(i["d"] < -0.6 and not i["reached"] for i in verdict["images"])
    model, _ = load_checkpoint(workspace / "base.safetensors")
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, tmp_path / "sd.pt")
    c = model.config
    (tmp_path / "args.json").write_text(json.dumps({"n_flow": c.n_flow, "n_block": c.n_block, "affine": c.affine,
                                                    "no_lu": False, "n_bits": c.n_bits, "img_size": c.img_size}))
    result = CliRunner().invoke(import_command, [str(tmp_path / "sd.pt"), "--args", str(tmp_path / "args.json"),
                                                 "--out", str(tmp_path / "imported.safetensors")])
    assert result.exit_code == 0, result.output


def test_rebalancing_an_attribute_reports_its_share(workspace: Path, two_people: FaceSet, tmp_path: Path) -> None:
    from taming.attribute import Recipe, fit_classifier, save_classifier
    from taming.data import load_faces
    from taming.pipeline import Rebalance, Request, run_requests
    from taming.tame import TameConfig

    positive = load_faces(workspace / "forget", 16, 1).subset(np.arange(4))  # "the attribute": person 0
    negative = load_faces(workspace / "remember", 16, 1)
    classifier = fit_classifier(positive, negative, Recipe(members=1, steps=60, folds=2))
    save_classifier(classifier, tmp_path / "c.safetensors")
    result = run_requests(workspace / "base.safetensors", negative, [Request("r", positive)],
                          TameConfig(lr=2e-3, max_iterations=20), tmp_path / "t.safetensors",
                          rebalance=Rebalance(positive, negative, target_share=0.0, direction="decrease",
                                              classifier_path=tmp_path / "c.safetensors", samples=64))
    report = result.reports["r"].as_json()
    share = report["metrics"]["attribute_share"]
    assert {"before", "after", "target", "before_interval", "after_interval", "trace", "identity_kept"} <= set(share)
    assert share["target"] == 0.0 and share["samples"] == 64 and share["classifier"]["grouping"] == "image"
    assert share["before_interval"][0] <= share["before"] <= share["before_interval"][1]
    assert result.criterion_met == share["reached"]
    assert share["trace"][0]["iteration"] == 0
    assert "bpd_forget" in report["metrics"] and "data:image/png;base64" in result.html["r"]


def test_feature_network_is_trained_once_per_model(workspace: Path, two_people: FaceSet, tmp_path: Path) -> None:
    from taming.pipeline import Request, run_requests
    from taming.tame import TameConfig

    # the remember set holds both people; each request leaves a different person out of D_R
    for person, key in ((0, "a"), (1, "b")):
        forget = two_people.subset(np.flatnonzero(two_people.identity == person)[:3])
        run_requests(workspace / "base.safetensors", two_people, [Request(key, forget)],
                     TameConfig(max_iterations=1), tmp_path / f"{key}.safetensors", cache_dir=tmp_path / "cache")
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    sha, a, b = (file_sha256(p)[:16] for p in (workspace / "base.safetensors", tmp_path / "a.safetensors",
                                               tmp_path / "b.safetensors"))
    # the feature network once per model; the base model's figures and samples once per version (each job's
    # tamed model's figures are those of the version it makes)
    assert cached == sorted([f"base-bpd-{sha}.npz", f"base-bpd-{a}.npz", f"base-bpd-{b}.npz",
                             f"features-v2-{two_people.data_hash()[:16]}.safetensors",
                             f"samples-{sha}-{two_people.data_hash()[:16]}-1000-0.7-2024.pt"])


def test_a_job_keeps_its_tamed_models_figures_of_other_people_for_the_next_version(
        workspace: Path, two_people: FaceSet, tmp_path: Path) -> None:
    import torch

    from taming.checkpoint import load_checkpoint
    from taming.evaluate import BaseCache
    from taming.likelihood import image_keys, mean_bpd
    from taming.pipeline import Request, run_requests
    from taming.tame import TameConfig

    person0, person1 = (np.flatnonzero(two_people.identity == p) for p in (0, 1))
    result = run_requests(workspace / "base.safetensors", two_people, [Request("a", two_people.subset(person0[:3]))],
                          TameConfig(max_iterations=2), tmp_path / "a.safetensors", cache_dir=tmp_path)
    carried = BaseCache(tmp_path / f"base-bpd-{result.sha256[:16]}.npz")
    others = quantize(two_people.subset(person1).images, 5)
    keys = image_keys(others)
    # only the other people's images, never the forgotten person's
    assert {k for _, k in carried.values} == set(keys.tolist())
    (draws,) = {d for d, _ in carried.values}
    tamed, _ = load_checkpoint(tmp_path / "a.safetensors")
    fresh = mean_bpd(tamed, others, 5, draws, 0, keys=keys)
    torch.testing.assert_close(carried.mean_bpd(tamed, others, keys, 5, draws, 0), fresh)
    assert not carried.dirty  # every value came from the file


def test_forgotten_people_leave_every_set_of_other_people(two_people: FaceSet) -> None:
    from taming.pipeline import Request, without_forgotten_people

    person0 = np.flatnonzero(two_people.identity == 0)
    mixed = two_people.subset(np.r_[person0[10:], np.flatnonzero(two_people.identity == 1)])
    unlabelled = FaceSet(mixed.images, np.full(len(mixed), -1), mixed.names, mixed.sha256)
    # an uploaded held-out photo marks the person as surely as a forget image does
    request = Request("r", two_people.subset(person0[:3]), holdout=two_people.subset(person0[10:12]))
    assert set(without_forgotten_people(mixed, [request]).identity) == {1}
    # without identities only the identical images can leave
    assert len(without_forgotten_people(unlabelled, [request])) == len(mixed) - 2


def test_report_compares_with_other_people_only(workspace: Path, two_people: FaceSet, tmp_path: Path) -> None:
    from taming.pipeline import Request, run_requests
    from taming.tame import TameConfig

    person0 = two_people.subset(np.flatnonzero(two_people.identity == 0))
    request = Request("r", person0.subset(np.arange(5)), holdout=person0.subset(np.arange(15, 17)))
    # "other people's held-out photos" given as the person's own: nothing is left to compare with
    result = run_requests(workspace / "base.safetensors", two_people, [request], TameConfig(max_iterations=1),
                          tmp_path / "t.safetensors", remember_holdout=person0.subset(np.arange(10, 20)),
                          cache_dir=tmp_path)
    shifts = result.reports["r"].metrics["bpd_shift_sigma"]
    assert "forget_holdout" in shifts and "remember_holdout" not in shifts


def test_the_pipeline_announces_its_phases_and_names_each_quantiles_reference(
        workspace: Path, two_people: FaceSet, tmp_path: Path) -> None:
    from taming.pipeline import Request, run_requests
    from taming.tame import TameConfig

    phases: list[str] = []
    person0, person1 = (np.flatnonzero(two_people.identity == p) for p in (0, 1))
    request = Request("r", two_people.subset(person0[:3]), holdout=two_people.subset(person0[15:18]))
    result = run_requests(workspace / "base.safetensors", two_people.subset(np.r_[person0[:15], person1[:15]]),
                          [request], TameConfig(max_iterations=1), tmp_path / "t.safetensors",
                          remember_holdout=two_people.subset(person1[15:]), on_phase=phases.append)
    assert phases == ["loading", "features", "taming", "confirming", "evaluating", "reporting"]
    # the person's held-out photos against other people's held-out photos, the rest against D_R
    reference = result.reports["r"].metrics["quantile_reference"]
    assert reference["forget_holdout"] == reference["remember_holdout"] == "remember_holdout"
    assert reference["forget"] == reference["remember"] == "remember"


def test_a_prepared_version_leaves_a_job_nothing_to_measure_on_the_base_and_forgets_the_person(
        workspace: Path, two_people: FaceSet, tmp_path: Path) -> None:
    from taming.evaluate import BaseCache
    from taming.likelihood import image_keys
    from taming.pipeline import Request, prepare_version, run_requests
    from taming.tame import TameConfig

    base = workspace / "base.safetensors"
    prepare_version(base, two_people, tmp_path)
    cache_file = tmp_path / f"base-bpd-{file_sha256(base)[:16]}.npz"
    prepared = set(BaseCache(cache_file).values)
    forget = two_people.subset(np.flatnonzero(two_people.identity == 0)[:3])
    run_requests(base, two_people, [Request("a", forget)], TameConfig(max_iterations=1), tmp_path / "a.safetensors",
                 cache_dir=tmp_path)
    after = set(BaseCache(cache_file).values)
    assert after <= prepared  # nothing measured again on the base model
    person0 = set(image_keys(quantize(two_people.subset(two_people.identity == 0).images, 5)).tolist())
    assert {k for _, k in after} == {k for _, k in prepared} - person0  # and the forgotten person's figures left
