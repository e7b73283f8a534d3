"""common.checkpoint as the one place checkpoints are read and written: strict load with the key diff,
prefix layouts, sha256, probe files, and a crafted pickle refused by every product reader."""
from __future__ import annotations

import hashlib
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from common.checkpoint import (
    load_checkpoint,
    load_state_dict_strict,
    save_checkpoint,
    select_prefix,
    sha256_file,
    strip_prefixes,
)
from common.errors import CheckpointError

RAN: list[str] = []  # what a crafted pickle managed to run (must stay empty)


def _mark(what: str) -> str:
    RAN.append(what)
    return what


class _Crafted:
    """Unpickling this calls ``_mark``: a stand-in for a file that carries code."""

    def __reduce__(self):
        return (_mark, ("crafted pickle ran",))


def _crafted(path: Path, payload: dict | None = None) -> Path:
    """A torch file whose pickle runs ``_mark`` when fully unpickled."""
    torch.save({**(payload or {}), "state_dict": {"w": torch.zeros(2)}, "extra": _Crafted()}, path)
    return path


@pytest.fixture(autouse=True)
def _nothing_ran():
    RAN.clear()
    yield
    assert RAN == [], "a crafted pickle was unpickled"


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


# ---------------------------------------------------------------------------------------- strict load
def test_strict_load_diff_lists_missing_unexpected_and_wrong_shape(tmp_path):
    model = _net()
    sd = dict(_net().state_dict())
    del sd["0.bias"]
    sd["0.bais"] = torch.zeros(3)
    sd["2.weight"] = torch.zeros(5, 3)
    path = tmp_path / "bad.pth"
    with pytest.raises(CheckpointError) as e:
        load_state_dict_strict(model, sd, path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: checkpoint does not fit Sequential: ")
    assert "missing 1 [0.bias]" in msg and "unexpected 1 [0.bais]" in msg
    assert "wrong shape 1 [2.weight: checkpoint (5, 3) vs model (2, 3)]" in msg

    with pytest.raises(CheckpointError) as e:
        load_state_dict_strict(model, sd, path, what="state dict does not match", sep="; ", style="counted")
    msg = str(e.value)
    assert msg.startswith(f"{path}: state dict does not match; 1 missing: 0.bias; 1 unexpected: 0.bais; ")
    assert msg.endswith("1 wrongly shaped: 2.weight (file [5, 3] vs model [2, 3])")

    # long lists are cut, with the count of the rest
    many = {f"extra.{i:02d}": torch.zeros(1) for i in range(12)}
    with pytest.raises(CheckpointError, match=r"unexpected 12 \[extra.00, .*extra.05, \.\.\. \(\+6 more\)\]"):
        load_state_dict_strict(model, {**_net().state_dict(), **many}, path)
    with pytest.raises(CheckpointError, match=r"12 unexpected: extra.00, .*extra.07, \.\.\. 4 more"):
        load_state_dict_strict(model, {**_net().state_dict(), **many}, path, style="counted")
    with pytest.raises(ValueError, match="unknown diff style"):
        load_state_dict_strict(model, sd, path, style="fancy")

    # a fitting state dict is loaded; allow_missing keeps the model's own value
    good = _net().state_dict()
    load_state_dict_strict(model, good, path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in good.items())
    before = model.state_dict()["0.bias"].clone()
    partial = {k: torch.ones_like(v) for k, v in good.items() if k != "0.bias"}
    load_state_dict_strict(model, partial, path, allow_missing=["0.bias"])
    assert torch.equal(model.state_dict()["0.bias"], before)
    assert torch.equal(model[0].weight, partial["0.weight"])


# -------------------------------------------------------------------------------------- key layouts
@pytest.mark.parametrize("keys, prefixes, want", [
    (["module.a", "module.b"], ["module."], ["a", "b"]),  # DDP
    (["backbone.a", "head.b"], ["backbone."], ["a", "head.b"]),  # frame backbone + head
    (["module.backbone.a"], ["module.", "backbone."], ["a"]),  # both, in either nesting
    (["backbone.module.a"], ["module.", "backbone."], ["a"]),
    (["model.blocks.0"], ["module.", "model."], ["blocks.0"]),  # pytorchvideo zoo
    (["a", "b"], ["module."], ["a", "b"]),  # nothing to strip
])
def test_strip_prefixes_layouts(keys, prefixes, want):
    sd = {k: i for i, k in enumerate(keys)}
    assert strip_prefixes(sd, prefixes) == dict(zip(want, range(len(keys)), strict=True))


def test_select_prefix_layouts():
    # VideoMAE pre-training file: encoder + decoder, keep the encoder
    sd = {"encoder.blocks.0": 1, "decoder.blocks.0": 2, "mask_token": 3}
    assert select_prefix(sd, ["encoder."]) == {"blocks.0": 1}
    # Pointcept Sonata training file: student backbone, not teacher or heads; first listed prefix wins
    sd = {"student.backbone.a": 1, "teacher.backbone.a": 0, "student.head.b": 2, "backbone.c": 4}
    assert select_prefix(sd, ["student.backbone.", "backbone."]) == {"a": 1}
    assert select_prefix({"a": 1}, ["encoder."]) == {"a": 1}


def test_point_layouts_go_through_the_module():
    from pointprobe.models.load import strip_prefixes as point_layout

    for prefix in ("", "module.", "backbone.", "module.backbone.", "student.backbone.",
                   "module.student.backbone."):
        sd = {f"{prefix}embedding.w": 1, f"{prefix}enc.x": 2}
        if "student" in prefix:
            sd[prefix.replace("student", "teacher") + "enc.x"] = 0
        assert point_layout(sd) == {"embedding.w": 1, "enc.x": 2}, prefix


# ------------------------------------------------------------------------------------------- sha256
def test_sha256_file_matches_hashlib(tmp_path):
    data = np.random.default_rng(0).bytes(10_000)
    path = tmp_path / "w.pth"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(path, chunk=7) == hashlib.sha256(data).hexdigest()  # several blocks
    from pointprobe.lift.image_encoders import file_sha256
    from pointprobe.models import checkpoint_sha256

    assert checkpoint_sha256(path) == file_sha256(path) == hashlib.sha256(data).hexdigest()
    with pytest.raises(CheckpointError, match="nope.pth: cannot read checkpoint"):
        sha256_file(tmp_path / "nope.pth")


# -------------------------------------------------------------------------------------- probe files
def test_probe_file_round_trip_through_the_module(tmp_path):
    from common.probes._files import read_probe_file, write_probe_file

    payload = {"format": "probesuite.test_probe", "version": 1, "w": torch.arange(6.0).view(2, 3),
               "classes": ["a", "b"], "best": {"lr": 0.1}}
    path = write_probe_file(payload, tmp_path / "sub" / "p.pt")
    assert sorted(p.name for p in path.parent.iterdir()) == ["p.pt"]  # no temporary left
    raw = load_checkpoint(path)  # the same reader, the same weights_only policy
    back = read_probe_file(path, "probesuite.test_probe", "test")
    for d in (raw, back):
        assert torch.equal(d["w"], payload["w"]) and d["classes"] == ["a", "b"] and d["best"] == {"lr": 0.1}
    with pytest.raises(CheckpointError, match=r"p.pt: not a probesuite linear probe file"):
        read_probe_file(path, "probesuite.linear_probe", "linear")
    with pytest.raises(CheckpointError, match="no such probe file"):
        read_probe_file(tmp_path / "none.pt", "probesuite.test_probe", "test")


# ------------------------------------------------------------------------ crafted pickle, every reader
def _refused(excinfo: pytest.ExceptionInfo, path: Path) -> str:
    msg = str(excinfo.value)
    assert str(path) in msg and "\n" not in msg
    assert "not on the list of harmless classes" in msg
    return msg


def test_crafted_pickle_refused_by_the_point_encoder_loader(tmp_path):
    from pointprobe.models import load_encoder

    path = _crafted(tmp_path / "enc.pth", {"arch": "ptv3", "config": {}})
    with pytest.raises(CheckpointError) as e:
        load_encoder(path)
    assert "encoder.trust_checkpoint=true" in _refused(e, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pointprobe.models.sparseunet import load_sparseunet
    with pytest.raises(CheckpointError) as e:
        load_sparseunet(path)
    _refused(e, path)


def test_crafted_pickle_refused_by_the_video_encoder_loader(tmp_path):
    from videoprobe.models import create_video_encoder

    path = _crafted(tmp_path / "videomae.pth")
    with pytest.raises(CheckpointError) as e:
        create_video_encoder("videomae_vit_tiny", checkpoint=str(path), num_frames=16, img_size=32)
    assert "encoder.trust_checkpoint=true" in _refused(e, path)


def test_crafted_pickle_refused_by_the_image_encoder_weights_reader(tmp_path):
    from pointprobe.lift.image_encoders import _load_state_dict

    path = _crafted(tmp_path / "dino.pth")
    with pytest.raises(CheckpointError) as e:
        _load_state_dict(path)
    assert "trust" not in _refused(e, path)  # no opt-in offered for image-encoder weights


def test_crafted_pickle_refused_by_the_probe_readers(tmp_path):
    from common.probes import load_attentive_probe, load_probe

    for fmt, load in (("probesuite.linear_probe", load_probe), ("probesuite.attentive_probe",
                                                                 load_attentive_probe)):
        path = _crafted(tmp_path / f"{fmt}.pt", {"format": fmt, "version": 1})
        with pytest.raises(CheckpointError) as e:
            load(path)
        msg = _refused(e, path)
        assert "cannot read probe file" in msg and "trust" not in msg  # a probe file has no opt-in


def test_crafted_pickle_refused_by_the_distill_resume(tmp_path):
    from pointprobe.lift.distill import Distiller

    last = _crafted(tmp_path / "last.pth", {"model": {}, "opt": {}, "epoch": 1, "step": 1, "train_hash": "x"})
    # the readers only need the device: a bare stand-in for a Distiller (building one needs lifted caches)
    stub = types.SimpleNamespace(device=torch.device("cpu"), _check_resume=lambda st, p: None)
    with pytest.raises(CheckpointError) as e:
        Distiller.load(stub, last)
    _refused(e, last)
    with pytest.raises(CheckpointError) as e:
        Distiller.resume(stub, last)
    _refused(e, last)


def test_pretrain_resume_refuses_a_crafted_pickle_and_the_summary_names_the_export(tmp_path):
    from common.config import load_config
    from pointprobe.models import load_encoder
    from pointprobe.pretrain.train import PretrainConfig, run_pretrain
    from tests.test_pretrain import TINY, _write_dataset

    root = _write_dataset(tmp_path / "data", 2)
    cfg = load_config(PretrainConfig, None,
                      [f"data.root={root}", *TINY, "train.steps=1", "train.batch_size=1"])
    res = run_pretrain(cfg, tmp_path / "run")
    # what the demo uses instead of re-reading encoder.pth: exactly what the file holds
    ckpt = load_checkpoint(res["encoder"])
    assert (res["arch"], res["config"]) == (ckpt["arch"], ckpt["config"])
    assert res["config"]["drop_path"] == 0.0
    assert load_encoder(res["encoder"]).config == res["config"]

    crafted = _crafted(tmp_path / "crafted.pth", {"format": "pointprobe-pretrain-v1"})
    with pytest.raises(CheckpointError) as e:  # resume=FILE
        run_pretrain(cfg, tmp_path / "run2", resume=crafted)
    _refused(e, crafted)
    out = tmp_path / "run3"
    out.mkdir()
    _crafted(out / "last.pth", {"format": "pointprobe-pretrain-v1"})
    with pytest.raises(CheckpointError) as e:  # automatic resume from out/last.pth
        run_pretrain(cfg, out)
    _refused(e, out / "last.pth")


def test_save_checkpoint_then_load_checkpoint_round_trip(tmp_path):
    obj = {"a": torch.ones(3), "meta": {"step": 2, "names": ["x"]}, "ns": np.float32(1.5)}
    path = save_checkpoint(obj, tmp_path / "deep" / "c.pth")
    back = load_checkpoint(path)
    assert torch.equal(back["a"], obj["a"]) and back["meta"] == obj["meta"] and back["ns"] == 1.5
