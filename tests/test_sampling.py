"""Tests of common.sampling against slow references (dict of voxel -> points, brute-force distances)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from common import sampling
from common.errors import InputError
from common.sampling import (
    GridSample,
    _voxel_ids,
    center_crop,
    clip_indices,
    grid_patch_mask,
    grid_sample,
    grid_sample_test,
    limit_labels,
    random_resized_crop,
    resize_short_side,
    sphere_crop,
    subset_items,
    three_crops,
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


def test_popcount_fallback_matches(monkeypatch):
    words = np.random.default_rng(0).integers(0, 2**63, 1000, dtype=np.int64).view(np.uint64)
    words[:3] = [0, 2**64 - 1, 1]
    expected = np.array([bin(int(w)).count("1") for w in words])
    np.testing.assert_array_equal(sampling._popcount64(words), expected)
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    np.testing.assert_array_equal(sampling._popcount64(words), expected)


def test_world_alignment_matches_pointcept_convention():
    coord = cloud(3000, seed=5) + np.float32(0.013)  # min not on a multiple of the grid
    world = grid_sample(coord, 0.1, mode="first", align="world")
    ref = np.floor(coord.astype(np.float64) / 0.1).astype(np.int64)
    ref -= ref.min(0)
    np.testing.assert_array_equal(voxel_grid_coord(coord, 0.1, align="world"), ref)
    np.testing.assert_array_equal(world.grid_coord[world.inverse], ref)
    _, ref_inverse = np.unique(ref, axis=0, return_inverse=True)
    np.testing.assert_array_equal(world.inverse, ref_inverse.ravel())
    assert len(grid_sample_test(coord, 0.1, align="world")[0]) == len(world)
    with pytest.raises(ValueError, match="align"):
        grid_sample(coord, 0.1, align="center")


def test_all_grouping_paths_agree():
    rng = np.random.default_rng(0)
    grid = rng.integers(0, 6, (3000, 3))
    dense = _voxel_ids(grid.T.astype(np.float64))
    spread = grid * np.array([1, 1, 10**7])  # too many cells for a dense table: sorted int64 keys
    huge = grid * np.array([1, 10**7, 10**13])  # beyond one exact float64 key: lexsort
    ref_voxels, ref_inverse = np.unique(grid, axis=0, return_inverse=True)
    np.testing.assert_array_equal(dense[0], ref_inverse.ravel())
    np.testing.assert_array_equal(dense[1], ref_voxels)
    scaled = (spread, huge, grid)
    for s, (inverse, voxels) in zip(scaled, (_voxel_ids(spread.T), _voxel_ids(huge.T), _voxel_ids(grid.T))):
        np.testing.assert_array_equal(inverse, dense[0])
        np.testing.assert_array_equal(voxels, np.unique(s, axis=0))


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


def test_train_mode_fallback_for_huge_clouds(monkeypatch):
    """Clouds of more than 2^32 points use a float-priority path; force it on a small cloud."""
    coord = cloud(3000, seed=4)
    monkeypatch.setattr(sampling, "_PACKED_MAX_ROWS", 10)
    gs = grid_sample(coord, 0.2, seed=3)
    check_against_reference(gs, coord, 0.2)
    np.testing.assert_array_equal(gs.index, grid_sample(coord, 0.2, seed=3).index)
    crowded = int(gs.inverse[0])
    assert len({int(grid_sample(coord, 0.2, seed=s).index[crowded]) for s in range(100)}) > 50


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


def test_other_point_functions_reject_nan():
    coord = cloud(100)
    coord[3] = np.nan
    with pytest.raises(InputError, match="a.ply: .*NaN"):
        sphere_crop(coord, 10, source="a.ply")
    with pytest.raises(InputError, match="NaN"):
        grid_patch_mask(coord, 0.1, 0.5)
    with pytest.raises(InputError, match="empty"):
        sphere_crop(np.zeros((0, 3)), 10)


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


# ---------------------------------------------------------------------------------------------------- video


def test_clip_indices_uniform():
    (clip,) = clip_indices(100, 8, 4)  # span 29, valid starts 0..71, centred start 35
    assert clip.dtype == np.int64 and clip.tolist() == [35 + 4 * i for i in range(8)]
    clips = clip_indices(100, 8, 4, num_clips=3)
    assert [int(c[0]) for c in clips] == [0, 36, 71]
    assert clips[-1][-1] == 99
    assert all(np.all(np.diff(c) == 4) for c in clips)


def test_clip_indices_random_is_seeded_and_in_range():
    clips = clip_indices(50, 4, 3, num_clips=20, mode="random", rng=0)
    assert all(c[0] >= 0 and c[-1] <= 49 and np.all(np.diff(c) == 3) for c in clips)
    assert len({int(c[0]) for c in clips}) > 5
    again = clip_indices(50, 4, 3, num_clips=20, mode="random", rng=np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(clips, again))


def test_clip_indices_short_video_repeats_last_frame():
    assert clip_indices(5, 4, 2)[0].tolist() == [0, 2, 4, 4]
    assert clip_indices(1, 3, 1, num_clips=2, mode="random", rng=1)[1].tolist() == [0, 0, 0]
    assert clip_indices(7, 4, 2)[0].tolist() == [0, 2, 4, 6]  # exactly one span


def test_clip_indices_errors():
    with pytest.raises(InputError, match="v.mp4: video has no frames"):
        clip_indices(0, 8, 2, source="v.mp4")
    with pytest.raises(ValueError, match="clip_len"):
        clip_indices(10, 0, 2)
    with pytest.raises(ValueError, match="mode"):
        clip_indices(10, 2, 2, mode="dense")


def video(c: int = 3, t: int = 4, h: int = 12, w: int = 20) -> torch.Tensor:
    return torch.arange(c * t * h * w, dtype=torch.float32).reshape(c, t, h, w)


def test_center_and_three_crops():
    v = video()
    crop = center_crop(v, 8)
    assert crop.shape == (3, 4, 8, 8)
    assert torch.equal(crop, v[:, :, 2:10, 6:14])
    assert center_crop(v, (12, 10)).shape == (3, 4, 12, 10)
    crops = three_crops(v, 12)
    assert [c.shape for c in crops] == [(3, 4, 12, 12)] * 3
    assert torch.equal(crops[0], v[..., :12]) and torch.equal(crops[1], v[..., 4:16])
    assert torch.equal(crops[2], v[..., 8:])
    tall = three_crops(v.transpose(2, 3), 12)  # (20, 12) frames: top / centre / bottom
    assert torch.equal(tall[2], v.transpose(2, 3)[:, :, 8:, :])
    with pytest.raises(ValueError, match="larger than"):
        center_crop(v, 13)


def test_resize_short_side():
    v = video(h=12, w=20)
    out = resize_short_side(v, 6)
    assert out.shape == (3, 4, 6, 10)
    ref = torch.nn.functional.interpolate(v[:, 1][None], size=(6, 10), mode="bilinear", antialias=True)[0]
    torch.testing.assert_close(out[:, 1], ref)
    assert resize_short_side(v.transpose(2, 3), 6).shape == (3, 4, 10, 6)
    u8 = (torch.rand(3, 2, 12, 20) * 255).to(torch.uint8)
    r8 = resize_short_side(u8, 24)
    assert r8.dtype == torch.uint8 and r8.shape == (3, 2, 24, 40)


def test_random_resized_crop():
    v = torch.rand(3, 4, 32, 48)
    out = random_resized_crop(v, 16, rng=0)
    assert out.shape == (3, 4, 16, 16)
    torch.testing.assert_close(out, random_resized_crop(v, 16, rng=0))
    assert not torch.equal(out, random_resized_crop(v, 16, rng=1))
    # scale (1, 1) with a free ratio is the whole frame: a plain resize
    whole = random_resized_crop(v, (16, 24), scale=(1.0, 1.0), ratio=(1.5, 1.5), rng=0)
    torch.testing.assert_close(whole, _resize_ref(v, 16, 24))
    # same crop for every frame: a constant-over-time video stays constant over time
    still = torch.rand(3, 1, 32, 48).expand(3, 5, 32, 48)
    out = random_resized_crop(still, 8, rng=3)
    assert torch.equal(out, out[:, :1].expand_as(out))


def _resize_ref(v: torch.Tensor, h: int, w: int) -> torch.Tensor:
    frames = [torch.nn.functional.interpolate(v[:, t][None], size=(h, w), mode="bilinear", antialias=True)[0]
              for t in range(v.shape[1])]
    return torch.stack(frames, dim=1)
