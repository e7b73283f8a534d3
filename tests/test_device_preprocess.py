"""The GPU path of ``encode_points`` tested on the CPU (same torch code, device=cpu): grid sampling,
canonical index, centre shift and feature assembly with torch give exactly the numpy path's kept
points, order, inverse and features; the copy back helpers; the ``device_preprocess`` option."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from common.errors import ConfigError
from common.sampling import (
    grid_sample,
    grid_sample_test,
    grid_sample_test_torch,
    grid_sample_torch,
)
from pointprobe.models import ENCODERS, create_encoder, encode_points
from pointprobe.models import encode as enc
from pointprobe.models.encode import (
    _HostCopies,
    _to_host,
    canonical_index,
    canonical_index_torch,
    center_shift,
    center_shift_torch,
    use_device_preprocess,
)

torch.set_num_threads(1)


def scene(n: int = 3000, seed: int = 0, offset: float = -1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A floor and a box around ``offset`` (negative coordinates), with ties: points snapped onto
    2 cm voxel borders, duplicated points (same coordinates, colours and normals) and -0.0 normals."""
    rng = np.random.default_rng(seed)
    floor = np.c_[rng.uniform(offset, offset + 2.4, (n // 2, 2)), np.zeros(n // 2)]
    box = rng.uniform(offset + 0.7, offset + 1.7, (n - n // 2, 3))
    coord = np.concatenate([floor, box]).astype(np.float32)
    coord[: n // 10] = np.round(coord[: n // 10] / 0.02) * 0.02  # on voxel borders
    k = n // 15
    coord[k: 2 * k] = coord[2 * k: 3 * k]  # duplicate points: same voxel, same coordinates
    color = rng.integers(0, 256, (n, 3)).astype(np.uint8)
    color[k: 2 * k] = color[2 * k: 3 * k]
    normal = rng.normal(size=(n, 3)).astype(np.float32)
    normal[k: 2 * k] = normal[2 * k: 3 * k]
    normal[: k // 2, 0] = -0.0
    normal[k // 2: k, 0] = 0.0
    return coord, color, normal


def same_sample(a, b) -> None:
    b = b.numpy()
    assert np.array_equal(a.index, b.index)
    assert np.array_equal(a.inverse, b.inverse)
    assert np.array_equal(a.grid_coord, b.grid_coord)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("align", ["world", "min"])
@pytest.mark.parametrize("mode", ["first", "train"])
def test_grid_sample_torch_is_the_numpy_result(seed, align, mode):
    coord, _, _ = scene(seed=seed, offset=-3.0 + seed)
    for grid in (0.02, 0.05, [0.02, 0.03, 0.05]):
        a = grid_sample(coord, grid, mode=mode, seed=seed, align=align)
        same_sample(a, grid_sample_torch(torch.from_numpy(coord), grid, mode=mode, seed=seed, align=align))
    # float64 coordinates too
    c64 = coord.astype(np.float64) * 3.1
    same_sample(grid_sample(c64, 0.02, mode=mode, seed=seed, align=align),
                grid_sample_torch(torch.from_numpy(c64), 0.02, mode=mode, seed=seed, align=align))


def test_grid_sample_torch_box_beyond_one_int64_key():
    """A box of more than 2^63 cells: numpy sorts the three columns, torch takes a unique of rows."""
    c = np.array([[0, 0, 0], [1e12, 0, 0], [0, 1e12, 1e12], [1e12, 0, 0], [0, 1e12, 1e12], [5, 5, 5]])
    same_sample(grid_sample(c, 0.001, mode="first"),
                grid_sample_torch(torch.from_numpy(c), 0.001, mode="first"))


@pytest.mark.parametrize("align", ["world", "min"])
def test_grid_sample_test_torch_is_the_numpy_result(align):
    coord, _, _ = scene(seed=3)
    a = grid_sample_test(coord, 0.05, align=align)
    b = grid_sample_test_torch(torch.from_numpy(coord), 0.05, align=align)
    assert len(a) == len(b) > 2
    for x, y in zip(a, b):
        same_sample(x, y)


def test_center_shift_and_canonical_index_torch_are_the_numpy_values():
    coord, color, normal = scene(seed=4)
    coord = coord + np.float32([12.3456, -7.891, 0.377])  # bounding-box sums that round in float32
    for c in (coord, coord.astype(np.float64)):
        a, b = center_shift(c), center_shift_torch(torch.from_numpy(c)).numpy()
        assert a.dtype == b.dtype and np.array_equal(a, b)
    xyz = center_shift(coord)
    feat = np.concatenate([xyz, color / np.float32(255), normal], 1).astype(np.float32)
    gs = grid_sample(xyz, 0.02, mode="first", align="world")
    assert (np.bincount(gs.inverse) > 1).sum() > 50  # many multi-point voxels: the sort is exercised
    a = canonical_index(gs.inverse, len(gs), feat)
    b = canonical_index_torch(torch.from_numpy(gs.inverse), len(gs), torch.from_numpy(feat)).numpy()
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="cover exactly"):
        canonical_index_torch(torch.from_numpy(gs.inverse), len(gs) + 1, torch.from_numpy(feat))


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_encoder("sonata_small", **ENCODERS["sonata_small"].smoke_config).eval()


@pytest.mark.parametrize("sampling", ["canonical", "first", "train", "test"])
@pytest.mark.parametrize("max_points", [None, 400])
def test_device_preprocess_features_equal_the_numpy_path(model, sampling, max_points, monkeypatch):
    coord, color, normal = scene(1500, seed=5)
    kw = dict(sampling=sampling, seed=2, max_points=max_points)
    a = encode_points(model, coord, color, normal, device_preprocess="cpu", **kw)
    half = encode_points(model, coord, color, normal, device_preprocess="cpu", out_dtype=torch.float16, **kw)
    # the device path must not fall back to the numpy sampling
    def refuse(*a, **k):
        raise AssertionError("numpy grid sampling called with device_preprocess='device'")

    monkeypatch.setattr(enc, "grid_sample", refuse)
    monkeypatch.setattr(enc, "grid_sample_test", refuse)
    b = encode_points(model, coord, color, normal, device_preprocess="device", **kw)
    assert b.dtype == torch.float32 and b.device.type == "cpu" and b.shape == (len(coord), a.shape[1])
    assert torch.equal(a, b)  # bitwise on the CPU
    assert torch.equal(half, encode_points(model, coord, color, normal, device_preprocess="device",
                                           out_dtype=torch.float16, **kw))
    # a subsampled cache's kept rows (encode_points rows=) on the device path: those rows of the full result
    rows = np.random.default_rng(3).choice(len(coord), 200, replace=False)
    kept = encode_points(model, coord, color, normal, device_preprocess="device", rows=rows, **kw)
    assert kept.shape == (200, a.shape[1]) and torch.equal(kept, a[torch.from_numpy(rows)])


def test_device_preprocess_without_colour_warns_and_zero_fills(model):
    coord, _, normal = scene(1200, seed=6)
    with pytest.warns(UserWarning, match="expects color"):
        a = encode_points(model, coord, None, normal, device_preprocess="cpu")
    with pytest.warns(UserWarning, match="expects color"):
        b = encode_points(model, coord, None, normal, device_preprocess="device")
    assert torch.equal(a, b)


def test_device_preprocess_option():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_device_preprocess("auto", cuda) and not use_device_preprocess("auto", cpu)
    assert use_device_preprocess("device", cpu) and not use_device_preprocess("cpu", cuda)
    with pytest.raises(ConfigError, match="device_preprocess"):
        use_device_preprocess("gpu", cpu)


def test_auto_preprocesses_with_numpy_on_the_cpu(model, monkeypatch):
    """The default on the CPU is today's numpy path (the release-fidelity tests run through it)."""
    coord, color, normal = scene(800, seed=7)
    called = []
    monkeypatch.setattr(enc, "_encode_points_device", lambda *a, **k: called.append(1))
    encode_points(model, coord, color, normal)
    assert called == []
    encode_points(model, coord, color, normal, device_preprocess="device")
    assert called == [1]


def test_copy_back_helpers_on_the_cpu():
    t = torch.arange(12.0).reshape(4, 3)
    assert torch.equal(_to_host(t), t)
    copies = _HostCopies()
    copies.add(torch.tensor([3, 1]), t[:2])
    copies.add(torch.tensor([0, 2]), t[2:])
    out = copies.finish(torch.zeros(4, 3))
    assert torch.equal(out, t[[2, 1, 3, 0]])
    assert copies.pending == []
