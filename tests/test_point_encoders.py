"""Every ``pointprobe.models.ENCODERS`` entry: random init, its checkpoint layouts, loading through
``build_encoder``, a forward pass on a small generated scene, feature dims and the block layout."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from common.checkpoint import save_checkpoint
from pointprobe.models import (
    ENCODERS,
    EncoderSpec,
    PointEncoderConfig,
    build_encoder,
    create_encoder,
    encode_points,
    save_encoder,
)
from pointprobe.models.structure import block_index

torch.set_num_threads(1)


def _scene(n: int = 1500, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A floor and a box: float32 coordinates in metres, uint8 colours, unit normals."""
    rng = np.random.default_rng(seed)
    floor = np.c_[rng.uniform(0, 1.2, (n // 2, 2)), np.zeros(n // 2)]
    box = rng.uniform(0.3, 0.7, (n - n // 2, 3))
    coord = np.concatenate([floor, box]).astype(np.float32)
    color = rng.integers(0, 256, (n, 3)).astype(np.uint8)
    normal = rng.normal(size=(n, 3)).astype(np.float32)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    return coord, color, normal


def _small(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_encoder(name, **ENCODERS[name].smoke_config).eval()


def test_every_entry_is_a_spec():
    assert set(ENCODERS) >= {"ptv3", "sonata", "sonata_small", "ptv3_tiny", "sparseunet"}
    for name, spec in ENCODERS.items():
        assert isinstance(spec, EncoderSpec), name


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_block_layout_is_ordered_and_covers_the_blocks(name):
    model = _small(name)
    layout = model.block_layout()
    names = [b for b, _ in layout]
    assert len(layout) >= 2 and len(set(names)) == len(names)
    params = [n for n, _ in model.named_parameters()]
    owner = {n: block_index(n, layout) for n in params}
    for i, (block, prefixes) in enumerate(layout):
        assert any(owner[n] == i for n in params), f"block {block} owns no parameter"
        assert all(any(n.startswith(p) for p in prefixes) for n in params if owner[n] == i)
    # depth order: a block's index only grows along the parameter order of the module tree
    seen = [owner[n] for n in params if owner[n] is not None]
    assert seen == sorted(seen)
    assert any(owner[n] is None for n in params)  # stem / embedding belong to no block


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_feature_dims_without_weights(name):
    spec = ENCODERS[name]
    model = _small(name)
    assert spec.feature_dims(**spec.smoke_config) == (model.feature_dim(None), model.feature_dim(0))
    full = spec.feature_dims()  # the preset itself, on the meta device
    assert full[0] >= full[1] > 0


def test_release_preset_dims():
    assert ENCODERS["sonata"].feature_dims() == (48 + 96 + 192 + 384 + 512, 512)
    assert ENCODERS["sonata_small"].feature_dims() == (32 + 64 + 128 + 256 + 512, 512)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_checkpoint_round_trip_through_build_encoder(name, tmp_path):
    spec = ENCODERS[name]
    model = _small(name)
    coord, color, normal = _scene()
    ref = encode_points(model, coord, color, normal)
    assert ref.shape == (len(coord), model.feature_dim()) and torch.isfinite(ref).all()
    assert not torch.allclose(ref[0], ref[-1])  # a constant encoder would pass the shape checks

    # this project's layout {"arch", "config", "state_dict", "meta"}
    path = save_encoder(model, tmp_path / "enc.pth", source="test")
    loaded, rec = build_encoder(PointEncoderConfig(name=name, checkpoint=str(path)), torch.device("cpu"))
    assert rec.name == spec.arch == loaded.arch and rec.config == dict(model.config)
    assert len(rec.checkpoint_sha256) == 64
    assert not any(p.requires_grad for p in loaded.parameters())
    assert torch.equal(encode_points(loaded, coord, color, normal), ref)

    # a training checkpoint: DDP + student.backbone prefixes, no arch/config (given as encoder.config)
    sd = {f"module.student.backbone.{k}": v for k, v in model.state_dict().items()}
    sd["module.student.mask_head.weight"] = torch.zeros(2)  # heads are not the encoder's: ignored
    train_path = save_checkpoint({"state_dict": sd, "epoch": 3, "arch": spec.arch}, tmp_path / "train.pth")
    loaded, rec = build_encoder(PointEncoderConfig(name=name, checkpoint=str(train_path),
                                                 config=dict(model.config)), torch.device("cpu"))
    assert torch.equal(encode_points(loaded, coord, color, normal), ref)


@pytest.mark.parametrize("name", ["ptv3_tiny", "sparseunet"])
def test_one_upcast_for_every_encoder(name):
    from common.errors import ConfigError
    from pointprobe.models import PointBatch, upcast

    model = _small(name)
    coord, color, normal = _scene(800)
    grid = np.floor((coord - coord.min(0)) / 0.05).astype(np.int64)
    feat = np.concatenate([coord, color / 255.0, normal], 1).astype(np.float32)[:, : model.in_channels]
    point = PointBatch.create(torch.from_numpy(coord), torch.from_numpy(grid), torch.from_numpy(feat))
    with torch.no_grad():
        out = model(point)
        depth = len(out.levels()) - 1
        assert torch.equal(upcast(out).feat, model.encode(point))
        assert torch.equal(upcast(out, 0).feat, model.encode(point, 0))
        assert len(upcast(out, steps=1)) == len(out.levels()[-2])
        for bad in ({"steps": depth + 1}, {"levels": 2, "steps": 1}, {"levels": -1}):
            with pytest.raises(ConfigError, match="upcast"):
                upcast(out, **bad)


def test_cache_key_preprocessing_is_the_recipe():
    """The key's preprocessing is Preprocessing.key() plus levels and views: the same fields and values
    as the literal cache_key wrote before the recipe was one dataclass (caches stay valid)."""
    from pointprobe.extract import ExtractConfig, cache_key
    from pointprobe.models import RAW, EncoderRecord, Preprocessing

    rec = EncoderRecord("ptv3", "x", None, "random:0", {}, None)
    cfg = ExtractConfig(grid_size=0.03, sampling="first", grid_align="min", tta=2)
    assert cfg.preprocessing == Preprocessing(grid_size=0.03, sampling="first", align="min")
    assert cache_key(rec, cfg, "val").preprocessing == {
        "center_shift": "input dtype", "grid_size": 0.03, "color": "/255", "sampling": "first",
        "grid_align": "min", "feat": "coord,color,normal", "levels": None,
        "tta": [[0.0, False], [90.0, False]]}
    raw = EncoderRecord(RAW, RAW, None, "none", {}, None)
    assert cache_key(raw, ExtractConfig(), "val").preprocessing == {
        "center_shift": True, "grid_size": 0.02, "color": "/255", "sampling": "canonical",
        "feat": "coord,color,normal", "levels": None, "tta": []}


def test_encode_points_takes_the_recipe():
    from common.errors import ConfigError
    from pointprobe.models import Preprocessing

    model = _small("sparseunet")
    coord, color, normal = _scene(600)
    prep = Preprocessing(grid_size=0.05, sampling="first", align="min")
    a = encode_points(model, coord, color, normal, prep=prep)
    assert torch.equal(a, encode_points(model, coord, color, normal, grid_size=0.05, sampling="first",
                                        align="min"))
    assert not torch.equal(a, encode_points(model, coord, color, normal, prep=Preprocessing(grid_size=0.05)))
    with pytest.raises(ConfigError, match="not both"):
        encode_points(model, coord, color, normal, prep=prep, grid_size=0.05)
    with pytest.raises(ConfigError, match="unknown option"):
        encode_points(model, coord, color, normal, grid=0.05)
