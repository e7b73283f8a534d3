"""The release's voxelisation (align="world") is the default wherever a point encoder runs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from common.cache import CacheWriter
from common.errors import CacheError
from pointprobe.data.points import PointInput
from pointprobe.extract import RAW, EncoderRecord, ExtractConfig, cache_key
from pointprobe.label import extract_config_for_probe
from pointprobe.models import PointBatch, encode_points, load_encoder
from pointprobe.models.ptv3 import PTV3_TINY_CONFIG, PointTransformerV3
from pointprobe.viz import point_features

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # spconv's torch.cuda.amp decorators

GRID = 0.05


@pytest.fixture(scope="module")
def release_model(tmp_path_factory):
    """A checkpoint in the Sonata release layout ({"config", "state_dict"}), loaded as a user would."""
    torch.manual_seed(0)
    model = PointTransformerV3(**PTV3_TINY_CONFIG)
    path = tmp_path_factory.mktemp("ckpt") / "sonata_like.pth"
    torch.save({"config": dict(PTV3_TINY_CONFIG), "state_dict": model.state_dict()}, path)
    return load_encoder(str(path))


@pytest.fixture(scope="module")
def scene():
    """Points whose bounding box is not a multiple of the grid: "min" and "world" voxels differ."""
    rng = np.random.default_rng(0)
    xyz = rng.uniform([0.0, 0.0, 0.0], [2.013, 1.527, 0.961], (4000, 3)) + np.array([3.0, -1.0, 0.2])
    return xyz, rng.uniform(0, 255, (4000, 3)), rng.normal(size=(4000, 3))


def release_grid_coord(xyz: np.ndarray) -> np.ndarray:
    """The release's CenterShift(apply_z) + GridSample grid coordinates, written out by hand."""
    lo, hi = xyz.min(0), xyz.max(0)
    shifted = xyz - np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]])
    g = np.floor(shifted / GRID).astype(np.int64)
    return g - g.min(0)


def test_encode_points_default_voxelises_like_the_release(release_model, scene, monkeypatch):
    seen: list[PointBatch] = []
    encode = release_model.encode

    def spy(point, levels=None):
        seen.append(point)
        return encode(point, levels)

    monkeypatch.setattr(release_model, "encode", spy)
    default = encode_points(release_model, *scene, grid_size=GRID, max_points=None)
    expected = release_grid_coord(scene[0])
    got = seen[0].grid_coord.numpy()
    assert np.array_equal(np.unique(got, axis=0), np.unique(expected, axis=0))
    # every encoded row carries the release's voxel of its own point
    lo, hi = scene[0].min(0), scene[0].max(0)
    shifted = (scene[0] - np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]])).astype(np.float32)
    voxel_of = {row.tobytes(): g for row, g in zip(shifted, expected)}
    assert all(np.array_equal(voxel_of[c.tobytes()], g) for c, g in zip(seen[0].coord.numpy(), got))
    world = encode_points(release_model, *scene, grid_size=GRID, max_points=None, align="world")
    old = encode_points(release_model, *scene, grid_size=GRID, max_points=None, align="min")
    assert torch.equal(default, world)
    assert not torch.allclose(default, old, atol=1e-3)
    # points of one release voxel share one feature row
    _, inv = np.unique(expected, axis=0, return_inverse=True)
    first = np.unique(inv.ravel(), return_index=True)[1]
    assert torch.equal(default, default[first[inv.ravel()]])


def test_featviz_features_default_to_the_release_voxels(release_model, scene):
    xyz, rgb, nrm = scene
    pts = PointInput("s", xyz, rgb.astype(np.uint8), nrm, None, "s.ply")
    f = point_features(release_model, pts, grid_size=GRID)
    ref = encode_points(release_model, xyz, rgb.astype(np.uint8), nrm, grid_size=GRID, align="world")
    assert np.array_equal(f, ref.numpy())


def _record(name: str = "ptv3") -> EncoderRecord:
    return EncoderRecord(name, name, "sonata.pth", "ab" * 32, dict(PTV3_TINY_CONFIG), None)


def test_extract_default_and_cache_key_record_grid_align(tmp_path):
    cfg = ExtractConfig()
    assert cfg.grid_align == "world"
    key = cache_key(_record(), cfg, "train")
    assert key.preprocessing["grid_align"] == "world"
    # a cache written before the default changed has no grid_align in its key (its origin was "min")
    old_prep = {k: v for k, v in key.preprocessing.items() if k != "grid_align"}
    old_key = type(key)(**{**key.to_dict(), "preprocessing": old_prep})
    writer = CacheWriter(tmp_path / "train", old_key, 4, dtype="float32")
    writer.fill(["scene0000_00"], lambda name: {"features": np.zeros((3, 4), np.float32),
                                                "labels": np.zeros(3, np.int64)}, progress=False)
    writer.close()
    with pytest.raises(CacheError, match=r"preprocessing\.grid_align=<unset> but this run has world"):
        CacheWriter(tmp_path / "train", key, 4, dtype="float32")
    # "min" is still a named option, recorded as such
    assert cache_key(_record(), ExtractConfig(grid_align="min"), "train").preprocessing["grid_align"] == "min"
    # raw input features do not depend on voxels: raw caches keep their key
    assert "grid_align" not in cache_key(_record(RAW), cfg, "train").preprocessing


def test_cache_of_the_float64_centre_shift_is_refused(tmp_path):
    key = cache_key(_record(), ExtractConfig(), "train")
    assert key.preprocessing["center_shift"] == "input dtype"
    # an opt-in "world" cache written while the centre shift was computed in float64
    old_key = type(key)(**{**key.to_dict(), "preprocessing": {**key.preprocessing, "center_shift": True}})
    writer = CacheWriter(tmp_path / "train", old_key, 4, dtype="float32")
    writer.fill(["scene0000_00"], lambda name: {"features": np.zeros((3, 4), np.float32),
                                                "labels": np.zeros(3, np.int64)}, progress=False)
    writer.close()
    with pytest.raises(CacheError, match=r"preprocessing\.center_shift=true but this run has input dtype"):
        CacheWriter(tmp_path / "train", key, 4, dtype="float32")
    assert cache_key(_record(RAW), ExtractConfig(), "train").preprocessing["center_shift"] is True


def test_label_reads_grid_align_of_the_probe():
    spec = ExtractConfig().encoder
    old = extract_config_for_probe(spec, {"grid_size": 0.02, "sampling": "canonical", "tta": []})
    assert old.grid_align == "min"  # a probe trained on a cache made before "world" was the default
    new = extract_config_for_probe(spec, {"grid_size": 0.02, "grid_align": "world", "tta": [[0.0, False]]})
    assert new.grid_align == "world" and new.tta == 1


def release_grid_coord_float32(xyz: np.ndarray) -> np.ndarray:
    """The release's CenterShift on a float32 array (shift and result rounded to float32), then the
    voxel ``floor(shifted / g)`` (float64 division) minus its minimum, written out by hand."""
    lo, hi = xyz.min(0), xyz.max(0)
    shift = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]], dtype=np.float32)
    shifted = xyz - shift
    assert shifted.dtype == np.float32
    g = np.floor(shifted.astype(np.float64) / GRID).astype(np.int64)
    return g - g.min(0)


def test_float32_points_on_voxel_borders_get_the_release_voxels(release_model, monkeypatch):
    """float32 clouds (ScanNet files, generated rooms) are centre-shifted in float32 as the release
    does: points lying on voxel borders then fall in the release's voxel, not its neighbour."""
    rng = np.random.default_rng(5)
    n = 3000
    xyz = rng.uniform([0.0, 0.0, 0.0], [3.0, 2.0, 1.0], (n, 3)).astype(np.float32)
    xyz[:2] = [[0.0, 0.0, 0.0], [3.0, 2.0, 1.0]]
    xyz = xyz + np.float32([12.3456, -7.891, 0.377])  # bounding box sums that round in float32
    # snap a third of the points onto voxel borders of the release's frame
    lo, hi = xyz.min(0), xyz.max(0)
    shift = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]], dtype=np.float32)
    snap = np.arange(2, n, 3)
    xyz[snap] = (np.round((xyz[snap] - shift) / GRID) * GRID + shift).astype(np.float32)
    expected = release_grid_coord_float32(xyz)
    # the float64 arithmetic used before puts some of these points in another voxel
    lo64, hi64 = xyz.astype(np.float64).min(0), xyz.astype(np.float64).max(0)
    s64 = xyz - np.array([(lo64[0] + hi64[0]) / 2, (lo64[1] + hi64[1]) / 2, lo64[2]])
    g64 = np.floor(s64 / GRID).astype(np.int64)
    assert (g64 - g64.min(0) != expected).any(axis=1).sum() > 0
    seen: list[PointBatch] = []
    encode = release_model.encode

    def spy(point, levels=None):
        seen.append(point)
        return encode(point, levels)

    monkeypatch.setattr(release_model, "encode", spy)
    rgb = rng.uniform(0, 255, (n, 3)).astype(np.float32)
    nrm = rng.normal(size=(n, 3)).astype(np.float32)
    f = encode_points(release_model, xyz, rgb, nrm, grid_size=GRID, max_points=None, sampling="first")
    _, first, inv = np.unique(expected, axis=0, return_index=True, return_inverse=True)
    got = seen[0].grid_coord.numpy()
    assert np.array_equal(np.unique(got, axis=0), expected[first])
    # the row encoded for each voxel is a point of that voxel, and every point reads its voxel's row
    voxel_row = {tuple(g): i for i, g in enumerate(got)}
    assert all(np.array_equal(expected[r], got[voxel_row[tuple(expected[r])]]) for r in range(n))
    assert torch.equal(f, f[first[inv.ravel()]])
