"""Checkpoint loading: release / Pointcept / own layouts, strict key check, hub names offline."""
from __future__ import annotations

import hashlib
import sys
import types

import numpy as np
import pytest
import torch

from common.errors import CheckpointError
from pointprobe.models import checkpoint_sha256, create_encoder, encode_points, load_encoder, save_encoder
from pointprobe.models.load import infer_ptv3_config, strip_prefixes
from pointprobe.models.ptv3 import PTV3_TINY_CONFIG, SONATA_SMALL_CONFIG

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # spconv's torch.cuda.amp decorators


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = create_encoder("ptv3_tiny").eval()
    with torch.no_grad():  # non-trivial biases / norms so a wrong mapping would show
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(0)
    xyz = np.concatenate([rng.uniform([0, 0, 0], [2, 2, 0.01], (3000, 3)),
                          rng.uniform([0, 0, 0], [2, 0.01, 1.5], (2000, 3))])
    return xyz, rng.uniform(0, 255, (5000, 3)), np.tile([0.0, 0.0, 1.0], (5000, 1))


def features(model, scene):
    return encode_points(model, *scene, grid_size=0.05)


def test_own_checkpoint_round_trip(tmp_path, tiny, scene):
    path = save_encoder(tiny, tmp_path / "enc.pth", seed=3, note="unit test")
    raw = torch.load(path, weights_only=True)
    assert raw["arch"] == "ptv3" and raw["meta"] == {"seed": 3, "note": "unit test"}
    loaded = load_encoder(path)
    assert not loaded.training and loaded.config == tiny.config
    assert loaded.checkpoint_path == str(path)
    for (k, a), (k2, b) in zip(tiny.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert torch.equal(features(loaded, scene), features(tiny, scene))
    assert checkpoint_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_release_layout_loads(tmp_path, tiny, scene):
    path = tmp_path / "release.pth"
    cfg = {**tiny.config, "traceable": True}  # stored exactly as the release constructor takes it
    torch.save({"config": cfg, "state_dict": tiny.state_dict()}, path)
    loaded = load_encoder(str(path), config={"enable_flash": False})
    assert loaded.config["enable_flash"] is False
    assert torch.allclose(features(loaded, scene), features(tiny, scene), atol=1e-6)


def test_pointcept_training_checkpoint(tmp_path, tiny, scene):
    sd = tiny.state_dict()
    full = {f"module.student.backbone.{k}": v for k, v in sd.items()}
    full.update({f"module.teacher.backbone.{k}": torch.zeros_like(v) for k, v in sd.items()})
    full["module.student.mask_head.weight"] = torch.zeros(4, 4)
    path = tmp_path / "model_last.pth"
    torch.save({"epoch": 3, "state_dict": full, "optimizer": {"lr": 0.1}}, path)
    # not a Sonata preset shape: the config must be given
    with pytest.raises(CheckpointError, match="model_last.pth.*no config.*match no Sonata preset"):
        load_encoder(path)
    loaded = load_encoder(path, config=PTV3_TINY_CONFIG)
    assert torch.equal(features(loaded, scene), features(tiny, scene))


def test_prefix_stripping_and_preset_inference():
    sd = {"module.backbone.embedding.stem.linear.weight": 1, "module.backbone.enc.enc0.x": 2}
    assert strip_prefixes(sd) == {"embedding.stem.linear.weight": 1, "enc.enc0.x": 2}
    sd = {"student.backbone.a": 1, "teacher.backbone.a": 0, "student.head.b": 2}
    assert strip_prefixes(sd) == {"a": 1}
    assert strip_prefixes({"a": 1}) == {"a": 1}
    with torch.device("meta"):
        small_sd = create_encoder("sonata_small").state_dict()
    cfg = infer_ptv3_config(small_sd, "x.pth")
    assert cfg == {**SONATA_SMALL_CONFIG, "mask_token": True}
    del small_sd["embedding.mask_token"]
    assert infer_ptv3_config(small_sd, "x.pth")["mask_token"] is False


def test_strict_key_check_lists_problems(tmp_path, tiny):
    sd = dict(tiny.state_dict())
    del sd["enc.enc1.block0.attn.qkv.bias"]
    sd["enc.enc1.block0.attn.rel_table"] = torch.zeros(3)
    sd["enc.enc2.block0.mlp.0.fc1.weight"] = torch.zeros(7, 64)
    path = tmp_path / "broken.pth"
    torch.save({"config": tiny.config, "state_dict": sd}, path)
    with pytest.raises(CheckpointError) as err:
        load_encoder(path)
    msg = str(err.value)
    assert "broken.pth" in msg and "\n" not in msg
    assert "1 missing: enc.enc1.block0.attn.qkv.bias" in msg
    assert "1 unexpected: enc.enc1.block0.attn.rel_table" in msg
    assert "enc.enc2.block0.mlp.0.fc1.weight (file [7, 64] vs model [128, 64])" in msg


def test_bad_files(tmp_path, tiny):
    with pytest.raises(CheckpointError, match="nope.pth: no such checkpoint"):
        load_encoder(tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pth: cannot read checkpoint") as e:
        load_encoder(junk)
    # the reason, not torch's advice to re-run with weights_only=False (a junk file is no safety question)
    msg = str(e.value)
    assert "not a torch checkpoint" in msg and "weights_only" not in msg and "\n" not in msg
    unknown = tmp_path / "unknown_key.pth"
    torch.save({"config": {**tiny.config, "enc_dropout": 0.1}, "state_dict": tiny.state_dict()}, unknown)
    with pytest.raises(CheckpointError, match="unknown_key.pth.*enc_dropout"):
        load_encoder(unknown)
    arch = tmp_path / "arch.pth"
    torch.save({"arch": "pointnet", "config": {}, "state_dict": tiny.state_dict()}, arch)
    with pytest.raises(CheckpointError, match="arch.pth.*pointnet"):
        load_encoder(arch)
    # weights_only=True: a pickled object is refused, not executed
    evil = tmp_path / "object.pth"
    obj = types.SimpleNamespace(a=1)
    torch.save({"config": tiny.config, "state_dict": tiny.state_dict(), "obj": obj}, evil)
    with pytest.raises(CheckpointError, match="object.pth: cannot read"):
        load_encoder(evil)


def test_hub_names_offline(tmp_path, monkeypatch, tiny):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/sonata/ckpt copy
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hfcache"))
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    with pytest.raises(CheckpointError, match="sonata: huggingface_hub is not installed.*--checkpoint"):
        load_encoder("sonata")

    calls = []

    def offline(repo_id, filename, **kw):
        calls.append((repo_id, filename, kw.get("local_files_only", False)))
        raise OSError("cannot reach huggingface.co")

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(hf_hub_download=offline))
    with pytest.raises(CheckpointError) as err:
        load_encoder("sonata_small")
    msg = str(err.value)
    assert "could not fetch sonata_small.pth" in msg and "hfcache" in msg and "--checkpoint" in msg
    assert calls == [("facebook/sonata", "sonata_small.pth", True),
                     ("facebook/sonata", "sonata_small.pth", False)]

    # cached file: resolved through the hub client without the network
    path = tmp_path / "sonata_small.pth"
    torch.save({"config": tiny.config, "state_dict": tiny.state_dict()}, path)
    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(
        hf_hub_download=lambda repo_id, filename, **kw: str(path)))
    assert load_encoder("sonata_small").config == tiny.config
    # the release's own download folder is used first
    release = tmp_path / ".cache" / "sonata" / "ckpt"
    release.mkdir(parents=True)
    torch.save({"config": tiny.config, "state_dict": tiny.state_dict()}, release / "sonata.pth")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    assert load_encoder("sonata").checkpoint_path == str(release / "sonata.pth")
