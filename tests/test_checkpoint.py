"""Checkpoints: safetensors round trip with metadata and SHA-256, rosinality import with strict keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from taming.checkpoint import CheckpointError, import_rosinality, load_checkpoint, read_metadata, save_checkpoint
from taming.glow import Glow


def test_round_trip_keeps_outputs_and_metadata(tiny_glow: Glow, tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    sha = save_checkpoint(tiny_glow, path, data_hash="abc", parent="")
    loaded, meta = load_checkpoint(path, expected_sha256=sha)
    assert meta["data_hash"] == "abc" and json.loads(meta["config"])["img_size"] == 8
    x = torch.rand(3, 1, 8, 8) - 0.5
    torch.testing.assert_close(loaded.log_prob(x), tiny_glow.log_prob(x))
    # ActNorm must not re-initialise on a loaded model
    assert all(int(m.initialized) == 1 for m in loaded.modules() if hasattr(m, "initialized"))


def test_wrong_sha_and_corruption_are_refused(tiny_glow: Glow, tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(tiny_glow, path)
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(path, expected_sha256="0" * 64)
    blob = bytearray(path.read_bytes())
    blob[-3] ^= 0xFF  # flip bits inside the last tensor
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "junk.safetensors")


def _rosinality_files(model: Glow, tmp_path: Path, prefix: str = "module.") -> tuple[Path, Path]:
    state = {prefix + k: v for k, v in model.state_dict().items()}
    sd, args = tmp_path / "model.pt", tmp_path / "args.json"
    torch.save(state, sd)
    c = model.config
    args.write_text(json.dumps({"n_flow": c.n_flow, "n_block": c.n_block, "affine": c.affine,
                                "no_lu": not c.conv_lu, "n_bits": c.n_bits, "img_size": c.img_size}))
    return sd, args


def test_rosinality_import_with_module_prefix(tiny_glow: Glow, tmp_path: Path) -> None:
    sd, args = _rosinality_files(tiny_glow, tmp_path)
    imported = import_rosinality(sd, args)
    x = torch.rand(2, 1, 8, 8) - 0.5
    torch.testing.assert_close(imported.log_prob(x), tiny_glow.log_prob(x))
    save_checkpoint(imported, tmp_path / "out.safetensors")
    assert read_metadata(tmp_path / "out.safetensors")["format"] == "taming-glow/1"


def test_rosinality_import_lists_missing_and_unexpected_keys(tiny_glow: Glow, tmp_path: Path) -> None:
    state = {"module." + k: v for k, v in tiny_glow.state_dict().items()}
    state.pop("module.blocks.0.prior.scale")
    state["module.blocks.9.extra"] = torch.zeros(1)
    sd, args = _rosinality_files(tiny_glow, tmp_path)
    torch.save(state, sd)
    with pytest.raises(CheckpointError, match=r"missing blocks\.0\.prior\.scale.*unexpected blocks\.9\.extra"):
        import_rosinality(sd, args)


def test_rosinality_import_refuses_pickled_objects(tmp_path: Path) -> None:
    import pickle

    class Evil:
        def __reduce__(self):  # would run on unpickling without weights_only
            return (print, ("pwned",))

    sd = tmp_path / "evil.pt"
    sd.write_bytes(pickle.dumps({"x": Evil()}))
    (tmp_path / "args.json").write_text("{}")
    with pytest.raises(CheckpointError, match="not a loadable state_dict"):
        import_rosinality(sd, tmp_path / "args.json")


def test_the_apis_conversion_runs_bounded_and_refuses_before_converting(tiny_glow: Glow, tmp_path: Path) -> None:
    import json

    from app.checkpoints import CheckpointProblem, check_rosinality_args, convert_rosinality, read_header

    sd, args = _rosinality_files(tiny_glow, tmp_path)
    out = tmp_path / "converted.safetensors"
    convert_rosinality(sd, args, out, timeout_s=300, memory_bytes=8 * 2**30)  # a real child process
    with open(out, "rb") as f:
        assert read_header(f, out.stat().st_size).image_size == tiny_glow.config.img_size
    with pytest.raises(CheckpointProblem, match=r"n_flow must be an integer in 1\.\.64"):
        check_rosinality_args(json.dumps({"n_flow": 10000}).encode())  # refused before a child starts
    # 128 MiB cannot even load torch: the child dies (how it reports that varies), the API answers with a 422
    with pytest.raises(CheckpointProblem, match="convert"):
        convert_rosinality(sd, args, tmp_path / "o2.safetensors", timeout_s=300, memory_bytes=2**27)
