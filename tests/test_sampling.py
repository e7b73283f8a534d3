"""Tests of common.sampling against slow references (dict of voxel -> points, brute-force distances)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from common.errors import InputError
from common.sampling import (
    GridSample,
    _voxel_ids,
    grid_patch_mask,
    grid_sample,
    grid_sample_test,
    limit_labels,
    sphere_crop,
    subset_items,
    voxel_grid_coord,
)


def cloud(n: int = 2000, seed: int = 0, crowd: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pts = rng.uniform(-0.5, 0.5, (n, 3))
    pts[: n // 4 if crowd is None else crowd] = pts[0]  # one crowded voxel
    return pts.astype(np.float32)


def voxel_dict(coord: np.ndarray, grid_size: float) -> dict[tuple[int, int, int], list[int]]:
    """Slow reference: voxel -> list of input rows, with the voxel formula computed per point."""
    lo = coord.astype(np.float64).min(0)
    voxels: dict[tuple[int, int, int], list[int]] = {}
    for i, p in enumerate(coord.astype(np.float64)):
        key = tuple(int(math.floor((p[d] - lo[d]) / grid_size)) for d in range(3))
        voxels.setdefault(key, []).append(i)
    return voxels


def check_against_reference(gs: GridSample, coord: np.ndarray, grid_size: float) -> None:
    voxels = voxel_dict(coord, grid_size)
    n, m = coord.shape[0], len(voxels)
    assert gs.index.dtype == gs.inverse.dtype == gs.grid_coord.dtype == np.int64
    assert gs.index.shape == (m,) and gs.inverse.shape == (n,) and gs.grid_coord.shape == (m, 3)
    assert gs.inverse.min() == 0 and gs.inverse.max() == m - 1
    # voxels ordered by lexicographic key; kept point lies in its voxel
    keys = sorted(voxels)
    assert [tuple(g) for g in gs.grid_coord.tolist()] == keys
    for v, key in enumerate(keys):
        assert int(gs.index[v]) in voxels[key]
        assert all(int(gs.inverse[i]) == v for i in voxels[key])


@pytest.mark.parametrize("grid_size", [0.05, 0.2, 1.0])
@pytest.mark.parametrize("mode", ["train", "first"])
def test_grid_sample_matches_reference(grid_size, mode):
    coord = cloud()
    gs = grid_sample(coord, grid_size, mode=mode, seed=0)
    check_against_reference(gs, coord, grid_size)
    if mode == "first":
        voxels = voxel_dict(coord, grid_size)
        assert gs.index.tolist() == [min(voxels[k]) for k in sorted(voxels)]


def test_inverse_points_to_same_voxel():
    coord = cloud(5000, seed=1)
    gs = grid_sample(coord, 0.03, seed=1)
    grid = voxel_grid_coord(coord, 0.03)
    np.testing.assert_array_equal(grid[gs.index[gs.inverse]], grid)
    np.testing.assert_array_equal(gs.grid_coord[gs.inverse], grid)


def test_voxel_grid_coord_formula():
    coord = np.array([[0.0, 1.0, -1.0], [0.25, 1.5, 0.0], [1.0, 1.05, -0.95]])
    np.testing.assert_array_equal(voxel_grid_coord(coord, 0.1),
                                  [[0, 0, 0], [2, 5, 10], [10, 0, 0]])
    np.testing.assert_array_equal(voxel_grid_coord(coord, [1.0, 0.5, 2.0], origin=[0, 0, 0]),
                                  [[0, 2, -1], [0, 3, 0], [1, 2, -1]])


def test_all_grouping_paths_agree():
    rng = np.random.default_rng(0)
    grid = rng.integers(0, 6, (3000, 3))
    dense = _voxel_ids(grid)
    spread = grid * np.array([1, 1, 10**7])  # too many cells for a dense table: sorted int64 keys
    huge = grid * np.array([1, 10**7, 10**13])  # beyond one int64 key: lexsort
    for inverse, m in (_voxel_ids(spread), _voxel_ids(huge)):
        assert m == dense[1]
        np.testing.assert_array_equal(inverse, dense[0])
    _, ref_inverse = np.unique(grid, axis=0, return_inverse=True)
    np.testing.assert_array_equal(dense[0], ref_inverse.ravel())


def test_train_mode_is_random_but_seeded():
    coord = cloud()
    a, b = grid_sample(coord, 0.2, seed=5), grid_sample(coord, 0.2, seed=5)
    np.testing.assert_array_equal(a.index, b.index)
    c = grid_sample(coord, 0.2, seed=np.random.default_rng(6))
    assert not np.array_equal(a.index, c.index)
    np.testing.assert_array_equal(a.inverse, c.inverse)
    # every point of the crowded voxel gets picked sometimes
    crowded = int(a.inverse[0])
    picks = {int(grid_sample(coord, 0.2, seed=s).index[crowded]) for s in range(200)}
    assert len(picks) > 100


def test_test_mode_covers_every_point():
    coord = cloud(3000, seed=2, crowd=40)
    passes = grid_sample_test(coord, 0.1)
    voxels = voxel_dict(coord, 0.1)
    assert len(passes) == max(len(v) for v in voxels.values())
    covered = np.zeros(len(coord), dtype=bool)
    keys = sorted(voxels)
    for i, gs in enumerate(passes):
        if i in (0, 1, len(passes) - 1):
            check_against_reference(gs, coord, 0.1)
        # pass i keeps point i % count of each voxel (input order)
        assert gs.index.tolist() == [voxels[k][i % len(voxels[k])] for k in keys]
        covered[gs.index] = True
    assert covered.all()


def test_bad_coordinates():
    coord = cloud(100)
    coord[7, 1] = np.nan
    with pytest.raises(InputError, match="scene0001.pth: .*NaN"):
        grid_sample(coord, 0.1, source="scene0001.pth")
    coord[7, 1] = np.inf
    with pytest.raises(InputError, match="NaN or inf"):
        grid_sample_test(coord, 0.1)
    with pytest.raises(InputError, match="empty"):
        grid_sample(np.zeros((0, 3)), 0.1)
    with pytest.raises(InputError, match=r"\(N, 3\)"):
        grid_sample(np.zeros((5, 2)), 0.1)
    with pytest.raises(ValueError, match="grid_size"):
        grid_sample(cloud(10), 0.0)
    with pytest.raises(ValueError, match="mode"):
        grid_sample(cloud(10), 0.1, mode="test")


def test_single_point():
    gs = grid_sample(np.array([[1.0, 2.0, 3.0]]), 0.02)
    assert gs.index.tolist() == [0] and gs.inverse.tolist() == [0] and gs.grid_coord.tolist() == [[0, 0, 0]]
    assert len(grid_sample_test(np.array([[1.0, 2.0, 3.0]]), 0.02)) == 1


def test_sphere_crop_is_k_nearest():
    coord = cloud(1000, seed=3)
    center = np.array([0.1, -0.2, 0.05])
    idx = sphere_crop(coord, 100, center=center)
    assert idx.dtype == np.int64 and idx.shape == (100,) and np.all(np.diff(idx) > 0)
    dist = np.linalg.norm(coord.astype(np.float64) - center, axis=1)
    np.testing.assert_array_equal(idx, np.sort(np.argsort(dist, kind="stable")[:100]))
    # random centre: an input point, so it is in its own crop; seeded
    a, b = sphere_crop(coord, 50, rng=4), sphere_crop(coord, 50, rng=4)
    np.testing.assert_array_equal(a, b)
    assert sphere_crop(coord, 5000).tolist() == list(range(1000))
    with pytest.raises(ValueError, match="n_points"):
        sphere_crop(coord, 0)


def test_sphere_crop_random_centre_is_a_crop_member():
    coord = np.random.default_rng(0).normal(size=(500, 3))
    rng = np.random.default_rng(9)
    centre_row = np.random.default_rng(9).integers(500)
    assert centre_row in sphere_crop(coord, 20, rng=rng)


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.7, 1.0])
def test_grid_patch_mask_ratio(ratio):
    coord = np.random.default_rng(1).uniform(0, 4, (20000, 3))
    mask = grid_patch_mask(coord, 0.5, ratio, rng=2)
    assert mask.dtype == bool and mask.shape == (20000,)
    assert abs(mask.mean() - ratio) < 0.1
    # masks are whole patches: points sharing a shifted patch share the mask value
    np.testing.assert_array_equal(mask, grid_patch_mask(coord, 0.5, ratio, rng=2))


def test_grid_patch_mask_masks_whole_patches():
    coord = np.random.default_rng(1).uniform(0, 2, (5000, 3))
    rng = np.random.default_rng(3)
    mask = grid_patch_mask(coord, 0.5, 0.5, rng=rng)
    offset = np.random.default_rng(3).uniform(0, 0.5, 3)
    patch = np.floor((coord - coord.min(0) + offset) / 0.5).astype(int)
    _, patch_id = np.unique(patch, axis=0, return_inverse=True)
    patch_id = patch_id.ravel()
    n_patches = patch_id.max() + 1
    per_patch = np.bincount(patch_id, weights=mask, minlength=n_patches) / np.bincount(patch_id)
    assert set(np.unique(per_patch)) <= {0.0, 1.0}
    assert per_patch.sum() == round(0.5 * n_patches)


def test_subset_items():
    items = [f"scene{i:04d}" for i in range(100)]
    sub = subset_items(items, 0.1, seed=0)
    assert len(sub) == 10 and sub == sorted(sub) and set(sub) <= set(items)
    assert sub == subset_items(items, 0.1, seed=0)
    assert sub != subset_items(items, 0.1, seed=1)
    assert len(subset_items(items, 0.001, seed=0)) == 1
    assert subset_items(items, 1.0, seed=0) == items
    with pytest.raises(ValueError, match="fraction"):
        subset_items(items, 0.0)


def test_limit_labels():
    rng = np.random.default_rng(0)
    labels = rng.integers(-1, 5, 1000)
    out = limit_labels(labels, 20, seed=1)
    assert out is not labels and (labels != -1).sum() > 20
    kept = out != -1
    assert kept.sum() == 20
    np.testing.assert_array_equal(out[kept], labels[kept])
    np.testing.assert_array_equal(out, limit_labels(labels, 20, seed=1))
    np.testing.assert_array_equal(limit_labels(labels, 10**6, seed=1), labels)
    assert (limit_labels(labels, 0) == -1).all()
