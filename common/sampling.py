"""Sampling for point clouds (numpy in, numpy out) and videos (torch tensors laid out (C, T, H, W)).

Point clouds: voxel grid sampling with the inverse map (``grid_sample``, ``grid_sample_test``; the
``*_torch`` variants give the same result with torch on any device, e.g. the GPU), k-nearest
crops (``sphere_crop``), cubic patch masking (``grid_patch_mask``, Sonata/MSC), subsets of scenes and of
labels for data-efficient probing (``subset_items``, ``limit_labels``).
Videos: clip frame indices (``clip_indices``) and spatial crops / resizes applied identically to every
frame (``center_crop``, ``three_crops``, ``random_resized_crop``, ``resize_short_side``).

Everything random takes a seed (``None``, an int, or a ``numpy.random.Generator``) and is deterministic
given it. Inputs a user can get wrong (NaN/inf coordinates, empty clouds, videos without frames) raise
``common.errors.InputError`` naming ``source`` (the file) when the caller passes it.
"""
from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from common.errors import InputError

_BIG_ENDIAN = sys.byteorder == "big"
_PACKED_MAX_ROWS = 2**32  # train-mode grid sampling packs (random, row) into one uint64 up to here

Seed = int | np.random.Generator | None
Align = Literal["min", "world"]
T = TypeVar("T")

# A dense occupancy table (one byte per cell of the grid's bounding box, briefly) is used while the box
# has at most this many cells per input point (plus a constant); larger / sparser boxes sort keys.
_DENSE_CELLS_PER_POINT = 64
_DENSE_CELLS_EXTRA = 1 << 24


def _rng(seed: Seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


# ----------------------------------------------------------------------------------------------------
# point clouds
# ----------------------------------------------------------------------------------------------------


@dataclass
class GridSample:
    """Result of voxel grid sampling of N input points into M occupied voxels.

    ``index`` (M,) int64: input row kept for each voxel (voxels ordered by their grid key);
    ``inverse`` (N,) int64: voxel id in [0, M) of every input point, so ``index[inverse]`` is the kept
    row standing in for each input point; ``grid_coord`` (M, 3) int64: voxel coordinates of the kept rows.
    """

    index: np.ndarray
    inverse: np.ndarray
    grid_coord: np.ndarray

    def __len__(self) -> int:
        return int(self.index.shape[0])


def _check_coord(coord: np.ndarray, source: str | None) -> np.ndarray:
    coord = np.asarray(coord)
    if coord.ndim != 2 or coord.shape[1] != 3:
        raise InputError(source, f"point coordinates must have shape (N, 3), got {coord.shape}")
    if coord.shape[0] == 0:
        raise InputError(source, "point cloud is empty (0 points)")
    if not np.issubdtype(coord.dtype, np.number):
        raise InputError(source, f"point coordinates must be numeric, got dtype {coord.dtype}")
    if not np.isfinite(coord).all():
        bad = int((~np.isfinite(coord).all(axis=1)).sum())
        raise InputError(source, f"point coordinates contain NaN or inf ({bad} of {coord.shape[0]} points)")
    return coord


def _grid_size_array(grid_size: float | Sequence[float]) -> np.ndarray:
    size = np.asarray(grid_size, dtype=np.float64)
    if size.ndim > 1 or (size.ndim == 1 and size.shape[0] != 3):
        raise ValueError(f"grid_size must be a number or 3 numbers, got {grid_size!r}")
    if not (np.isfinite(size).all() and (size > 0).all()):
        raise ValueError(f"grid_size must be positive and finite, got {grid_size!r}")
    return size


def _floor_columns(coord: np.ndarray, grid_size: float | Sequence[float],
                   origin: np.ndarray | Sequence[float] | None, source: str | None,
                   align: Align = "min") -> np.ndarray:
    """(3, N) float64, C order: voxel coordinates column by column (contiguous rows make every later
    pass over x, y, z a contiguous one). ``align="min"``: ``floor((coord - origin) / grid_size)``, origin
    defaulting to ``coord.min(0)``; ``align="world"``: ``floor(coord / grid_size)`` minus its minimum."""
    coord = _check_coord(coord, source)
    if align not in ("min", "world"):
        raise ValueError(f"align must be 'min' or 'world', got {align!r}")
    if align == "world" and origin is not None:
        raise ValueError("origin is only used with align='min'")
    size = _grid_size_array(grid_size).reshape(-1, 1)
    cols = np.array(coord.T, dtype=np.float64, order="C")
    if align == "min":
        if origin is None:
            cols -= cols.min(axis=1, keepdims=True)
        else:
            cols -= np.asarray(origin, dtype=np.float64).reshape(3, 1)
    cols /= size
    np.floor(cols, out=cols)
    if align == "world":
        cols -= cols.min(axis=1, keepdims=True)
    return cols


def voxel_grid_coord(coord: np.ndarray, grid_size: float | Sequence[float],
                     origin: np.ndarray | Sequence[float] | None = None,
                     source: str | None = None, align: Align = "min") -> np.ndarray:
    """Voxel coordinates (N, 3) int64 = ``floor((coord - origin) / grid_size)``, origin = ``coord.min(0)``.

    Computed in float64. With the default origin every coordinate is >= 0. ``align="world"`` gives
    Pointcept's / the Sonata release's convention instead: voxel borders at multiples of ``grid_size``,
    ``floor(coord / grid_size) - min(floor(coord / grid_size))`` (a different partition of the points).
    """
    return np.ascontiguousarray(_floor_columns(coord, grid_size, origin, source, align).T.astype(np.int64))


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount64(a: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (uint8 result); ``np.bitwise_count`` needs numpy >= 2."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(a)
    return _POPCOUNT8[a.view(np.uint8)].reshape(a.shape + (8,)).sum(axis=-1, dtype=np.uint8)


def _unravel(key: np.ndarray, dims: list[int]) -> np.ndarray:
    """(M, 3) int64 voxel coordinates from keys ``(x * dims[1] + y) * dims[2] + z``."""
    out = np.empty((key.shape[0], 3), dtype=np.int64)
    xy, out[:, 2] = np.divmod(key.astype(np.int64, copy=False), dims[2])
    out[:, 0], out[:, 1] = np.divmod(xy, dims[1])
    return out


def _voxel_ids(cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group equal voxels: ``cols`` (3, N) non-negative integer-valued (float64 or int) voxel coordinates
    -> (voxel id (N,) int64 per point, coordinates (M, 3) int64 of the M voxels), voxels in
    lexicographic (x, y, z) order."""
    n = cols.shape[1]
    dims = [int(d) + 1 for d in cols.max(axis=1)]
    cells = dims[0] * dims[1] * dims[2]  # python int: no overflow
    if cells < 2**53:  # one exact key per voxel, computed in float64
        cols = cols.astype(np.float64, copy=False)
        key_f = cols[0] * float(dims[1] * dims[2])
        key_f += cols[1] * float(dims[2])
        key_f += cols[2]
        if cells <= _DENSE_CELLS_PER_POINT * n + _DENSE_CELLS_EXTRA and cells < 2**31:
            # dense occupancy bitset of the bounding box; a point's voxel id is the rank of its cell
            # among occupied cells = occupied cells in earlier 64-bit words + set bits below it in its
            # word. No sort, and the tables stay small (cells / 8 bytes), so lookups mostly hit the cache.
            key = key_f.astype(np.int32)
            n_words = (cells >> 6) + 1
            occupied = np.zeros(n_words * 64, dtype=bool)
            occupied[key] = True
            voxels = _unravel(np.flatnonzero(occupied), dims)
            words = np.packbits(occupied, bitorder="little").view(np.uint64)
            del occupied
            before = np.zeros(n_words + 1, dtype=np.int64)
            np.cumsum(_popcount64(words), out=before[1:])
            word = key >> 6
            below = np.left_shift(np.uint64(1), (key & 63).astype(np.uint64))
            below -= np.uint64(1)
            below &= np.take(words, word)
            inverse = _popcount64(below).astype(np.int64)
            inverse += np.take(before, word)
            return inverse, voxels
        key = key_f.astype(np.int64)
        order = np.argsort(key)
        sorted_key = key[order]
    else:  # box too large for one exact key: lexicographic sort of the three columns
        cols = cols.astype(np.int64, copy=False)
        order = np.lexsort((cols[2], cols[1], cols[0]))
        sorted_key = cols[:, order].T
    new = np.empty(n, dtype=bool)
    new[0] = True
    diff = sorted_key[1:] != sorted_key[:-1]
    new[1:] = diff if diff.ndim == 1 else diff.any(axis=1)
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.cumsum(new) - 1
    voxels = sorted_key[new]
    return inverse, (_unravel(voxels, dims) if voxels.ndim == 1 else np.ascontiguousarray(voxels))


def grid_sample(coord: np.ndarray, grid_size: float | Sequence[float],
                mode: Literal["train", "first"] = "train", seed: Seed = None,
                source: str | None = None, align: Align = "min") -> GridSample:
    """Voxel grid sampling keeping one input point per occupied voxel, with the inverse map.

    ``mode="train"`` keeps a uniformly random point of each voxel (Pointcept ``GridSample`` train
    mode), deterministic given ``seed``; ``mode="first"`` keeps the lowest input row of each voxel.
    Voxels are ``floor((coord - coord.min(0)) / grid_size)``; output voxels are ordered by their
    (x, y, z) lexicographic grid key. NaN/inf or empty input raises ``InputError`` naming ``source``.
    ``align="world"`` puts voxel borders at multiples of ``grid_size`` as Pointcept / the Sonata
    release do (see :func:`voxel_grid_coord`).
    """
    if mode not in ("train", "first"):
        raise ValueError(f"grid_sample: mode must be 'train' or 'first', got {mode!r}")
    cols = _floor_columns(coord, grid_size, None, source, align)
    inverse, voxels = _voxel_ids(cols)
    n, m = cols.shape[1], voxels.shape[0]
    if mode == "train" and n <= _PACKED_MAX_ROWS:
        # per voxel: the row with the largest priority = (random uint32 << 32) | row
        priority = np.empty(n, dtype=np.uint64)
        words = priority.view(np.uint32).reshape(n, 2)[:, ::-1] if _BIG_ENDIAN else \
            priority.view(np.uint32).reshape(n, 2)
        words[:, 0] = np.arange(n, dtype=np.uint32)
        words[:, 1] = _rng(seed).integers(0, 2**32, size=n, dtype=np.uint32)
        best = np.zeros(m, dtype=np.uint64)
        np.maximum.at(best, inverse, priority)
        index = (best & np.uint64(0xFFFFFFFF)).astype(np.int64)
    elif mode == "train":  # more than 2^32 points: random priority, then the row holding it
        priority = _rng(seed).random(n)
        best = np.full(m, -1.0)
        np.maximum.at(best, inverse, priority)
        index = np.full(m, n, dtype=np.int64)
        hit = priority == best[inverse]
        np.minimum.at(index, inverse[hit], np.flatnonzero(hit))
    else:
        index = np.full(m, n, dtype=np.int64)
        np.minimum.at(index, inverse, np.arange(n, dtype=np.int64))
    return GridSample(index=index, inverse=inverse, grid_coord=voxels)


def grid_sample_test(coord: np.ndarray, grid_size: float | Sequence[float],
                     source: str | None = None, align: Align = "min") -> list[GridSample]:
    """Test-time grid sampling: k passes (k = most points in one voxel) that together keep every point.

    Points of a voxel are taken in input order; pass i keeps point ``i % count`` of each voxel (cyclic
    for voxels with fewer points). Every pass has the same voxel order and shares one read-only
    ``inverse`` array and one read-only ``grid_coord`` array. ``align`` as in :func:`grid_sample`.
    """
    inverse, grid_coord = _voxel_ids(_floor_columns(coord, grid_size, None, source, align))
    m = grid_coord.shape[0]
    counts = np.bincount(inverse, minlength=m)
    starts = np.zeros(m, dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    # rows grouped by voxel, input order inside a voxel (torch's stable integer sort: several times
    # faster than numpy's on 1M rows)
    order = torch.sort(torch.from_numpy(inverse), stable=True).indices.numpy()
    inverse.setflags(write=False)
    first = order[starts]
    grid_coord.setflags(write=False)
    passes = []
    for i in range(int(counts.max())):
        index = first if i == 0 else order[starts + i % counts]
        passes.append(GridSample(index=index, inverse=inverse, grid_coord=grid_coord))
    return passes


# --------------------------------------------------------------------- point clouds, torch (any device)
# The same voxels, voxel order, kept rows and inverse as the numpy functions above, computed with torch
# on the tensors' device (the GPU path of ``encode_points``): floors in float64, an exact int64 key per
# voxel (or a lexicographic unique of the three columns when the box has 2^63 cells or more), voxels in
# (x, y, z) order. Inputs are checked by the caller (finite, (N, 3), non-empty).


@dataclass
class GridSampleTensors:
    """``GridSample`` as torch tensors on one device: ``index`` (M,), ``inverse`` (N,), ``grid_coord``
    (M, 3), all int64."""

    index: torch.Tensor
    inverse: torch.Tensor
    grid_coord: torch.Tensor

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def numpy(self) -> GridSample:
        """The same result as numpy arrays (``GridSample``)."""
        return GridSample(self.index.cpu().numpy(), self.inverse.cpu().numpy(), self.grid_coord.cpu().numpy())


def voxel_ids_torch(coord: torch.Tensor, grid_size: float | Sequence[float],
                    align: Align = "min") -> tuple[torch.Tensor, torch.Tensor]:
    """(voxel id (N,) int64 of every point, voxel coordinates (M, 3) int64 in (x, y, z) order) of
    ``coord`` (N, 3) on its device; equal to the numpy path's ``_voxel_ids(_floor_columns(...))``."""
    if align not in ("min", "world"):
        raise ValueError(f"align must be 'min' or 'world', got {align!r}")
    size = torch.as_tensor(_grid_size_array(grid_size), dtype=torch.float64, device=coord.device)
    cols = coord.to(torch.float64)
    if align == "min":
        cols = cols - cols.min(dim=0, keepdim=True).values
    cols = torch.floor(cols / size)
    if align == "world":
        cols = cols - cols.min(dim=0, keepdim=True).values
    cols = cols.to(torch.int64)  # exact: floors of finite coordinates, >= 0
    dims = [int(d) + 1 for d in cols.max(dim=0).values.tolist()]
    if dims[0] * dims[1] * dims[2] < 2**63:
        key = (cols[:, 0] * dims[1] + cols[:, 1]) * dims[2] + cols[:, 2]
        voxels, inverse = torch.unique(key, sorted=True, return_inverse=True)
        xy, z = voxels.div(dims[2], rounding_mode="floor"), voxels.remainder(dims[2])
        x, y = xy.div(dims[1], rounding_mode="floor"), xy.remainder(dims[1])
        return inverse, torch.stack([x, y, z], dim=1)
    voxels, inverse = torch.unique(cols, sorted=True, return_inverse=True, dim=0)  # lexicographic rows
    return inverse, voxels


def grid_sample_torch(coord: torch.Tensor, grid_size: float | Sequence[float],
                      mode: Literal["train", "first"] = "train", seed: Seed = None,
                      align: Align = "min") -> GridSampleTensors:
    """:func:`grid_sample` on ``coord``'s device, with the same result: the same voxels in the same
    order, the same kept row per voxel (``train``: the same numpy random draws, made on the CPU) and
    the same inverse."""
    if mode not in ("train", "first"):
        raise ValueError(f"grid_sample: mode must be 'train' or 'first', got {mode!r}")
    inverse, voxels = voxel_ids_torch(coord, grid_size, align)
    n, m = inverse.shape[0], voxels.shape[0]
    rows = torch.arange(n, dtype=torch.int64, device=coord.device)
    if mode == "train":
        if n > _PACKED_MAX_ROWS:
            raise ValueError(f"grid_sample_torch: train mode takes at most 2^32 points, got {n}")
        # the numpy path's priority (random uint32 << 32) | row, shifted by -2^63 into int64: same order
        draw = torch.from_numpy(_rng(seed).integers(0, 2**32, size=n, dtype=np.uint32).astype(np.int64))
        priority = (draw.to(coord.device) - 2**31) * 2**32 + rows
        best = torch.empty(m, dtype=torch.int64, device=coord.device)
        best.scatter_reduce_(0, inverse, priority, "amax", include_self=False)
        index = best & 0xFFFFFFFF
    else:
        index = torch.empty(m, dtype=torch.int64, device=coord.device)
        index.scatter_reduce_(0, inverse, rows, "amin", include_self=False)
    return GridSampleTensors(index=index, inverse=inverse, grid_coord=voxels)


def grid_sample_test_torch(coord: torch.Tensor, grid_size: float | Sequence[float],
                           align: Align = "min") -> list[GridSampleTensors]:
    """:func:`grid_sample_test` on ``coord``'s device, with the same passes (same kept rows, order and
    inverse); the passes share one ``inverse`` and one ``grid_coord`` tensor."""
    inverse, grid_coord = voxel_ids_torch(coord, grid_size, align)
    m = grid_coord.shape[0]
    counts = torch.bincount(inverse, minlength=m)
    starts = torch.zeros(m, dtype=torch.int64, device=coord.device)
    starts[1:] = torch.cumsum(counts[:-1], 0)
    order = torch.sort(inverse, stable=True).indices
    first = order[starts]
    passes = []
    for i in range(int(counts.max())):
        index = first if i == 0 else order[starts + i % counts]
        passes.append(GridSampleTensors(index=index, inverse=inverse, grid_coord=grid_coord))
    return passes


def sphere_crop(coord: np.ndarray, n_points: int, center: np.ndarray | Sequence[float] | None = None,
                rng: Seed = None, source: str | None = None) -> np.ndarray:
    """Indices (min(n_points, N),) int64, ascending, of the points nearest to ``center``.

    ``center`` defaults to a random input point (drawn from ``rng``). Ties at the cut-off distance are
    broken arbitrarily but deterministically.
    """
    coord = _check_coord(coord, source)
    if int(n_points) != n_points or n_points < 1:
        raise ValueError(f"sphere_crop: n_points must be a positive int, got {n_points!r}")
    n = coord.shape[0]
    if n_points >= n:
        return np.arange(n, dtype=np.int64)
    c = coord[_rng(rng).integers(n)] if center is None else np.asarray(center, dtype=np.float64)
    if c.shape != (3,):
        raise ValueError(f"sphere_crop: center must have shape (3,), got {c.shape}")
    diff = coord.astype(np.float64) - c
    dist = np.einsum("ij,ij->i", diff, diff)
    idx = np.argpartition(dist, int(n_points) - 1)[: int(n_points)]
    idx.sort()
    return idx.astype(np.int64)


def grid_patch_mask(coord: np.ndarray, patch_size: float, ratio: float, rng: Seed = None,
                    source: str | None = None) -> np.ndarray:
    """Boolean mask (N,): points grouped into cubic patches of side ``patch_size`` (grid shifted by a
    random offset in [0, patch_size)^3), and ``round(ratio * P)`` of the P occupied patches masked.
    """
    coord = _check_coord(coord, source)
    if not (patch_size > 0 and math.isfinite(patch_size)):
        raise ValueError(f"grid_patch_mask: patch_size must be positive, got {patch_size!r}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"grid_patch_mask: ratio must be in [0, 1], got {ratio!r}")
    gen = _rng(rng)
    offset = gen.uniform(0.0, patch_size, size=3)
    origin = coord.min(axis=0).astype(np.float64) - offset
    patch, patches = _voxel_ids(_floor_columns(coord, patch_size, origin, source))
    p = patches.shape[0]
    chosen = np.zeros(p, dtype=bool)
    chosen[gen.permutation(p)[: int(round(ratio * p))]] = True
    return chosen[patch]


def subset_items(items: Sequence[T], fraction: float, seed: Seed = 0) -> list[T]:
    """A deterministic random subset of ``round(fraction * len)`` items (at least 1), in input order."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"subset_items: fraction must be in (0, 1], got {fraction!r}")
    items = list(items)
    if not items:
        return []
    k = max(1, int(round(fraction * len(items))))
    keep = np.sort(_rng(seed).choice(len(items), size=k, replace=False))
    return [items[i] for i in keep]


def limit_labels(labels: np.ndarray, n_points: int, seed: Seed = 0, ignore_index: int = -1) -> np.ndarray:
    """Copy of ``labels`` keeping ``n_points`` labelled points (chosen at random among the labelled
    ones, i.e. ``!= ignore_index``) and setting every other label to ``ignore_index``."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"limit_labels: labels must be 1-D, got shape {labels.shape}")
    if int(n_points) != n_points or n_points < 0:
        raise ValueError(f"limit_labels: n_points must be a non-negative int, got {n_points!r}")
    out = labels.copy()
    labelled = np.flatnonzero(labels != ignore_index)
    if labelled.size > n_points:
        drop = np.ones(labelled.size, dtype=bool)
        drop[_rng(seed).choice(labelled.size, size=int(n_points), replace=False)] = False
        out[labelled[drop]] = ignore_index
    return out


# ----------------------------------------------------------------------------------------------------
# videos: frame indices, then spatial crops of (C, T, H, W) tensors (the same crop for every frame)
# ----------------------------------------------------------------------------------------------------


def clip_indices(num_frames: int, clip_len: int, frame_step: int, num_clips: int = 1,
                 mode: Literal["uniform", "random"] = "uniform", rng: Seed = None,
                 source: str | None = None) -> list[np.ndarray]:
    """Frame indices (clip_len,) int64 of each of ``num_clips`` clips of ``clip_len`` frames taken every
    ``frame_step`` frames.

    A clip spans ``(clip_len - 1) * frame_step + 1`` frames. ``"uniform"``: clip starts evenly spaced
    from the first to the last valid start (one clip: the centred start); ``"random"``: each start
    drawn uniformly from the valid starts with ``rng``. A video shorter than one span starts at 0
    and repeats its last frame (indices clamped to ``num_frames - 1``). No frames raises ``InputError``.
    """
    for name, value in (("clip_len", clip_len), ("frame_step", frame_step), ("num_clips", num_clips)):
        if int(value) != value or value < 1:
            raise ValueError(f"clip_indices: {name} must be a positive int, got {value!r}")
    if int(num_frames) != num_frames or num_frames <= 0:
        raise InputError(source, f"video has no frames (num_frames={num_frames})")
    span = (clip_len - 1) * frame_step + 1
    max_start = max(int(num_frames) - span, 0)
    if mode == "uniform":
        if num_clips == 1:
            starts = np.array([max_start // 2])
        else:
            starts = np.round(np.linspace(0, max_start, num_clips)).astype(np.int64)
    elif mode == "random":
        starts = _rng(rng).integers(0, max_start + 1, size=num_clips)
    else:
        raise ValueError(f"clip_indices: mode must be 'uniform' or 'random', got {mode!r}")
    offsets = np.arange(clip_len, dtype=np.int64) * frame_step
    return [np.minimum(int(s) + offsets, int(num_frames) - 1) for s in starts]


def _size2(size: int | Sequence[int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, numbers.Integral) else tuple(size)
    if int(h) != h or int(w) != w or h < 1 or w < 1:
        raise ValueError(f"crop size must be a positive int or (height, width), got {size!r}")
    return int(h), int(w)


def _check_video(video: torch.Tensor) -> None:
    if not isinstance(video, torch.Tensor) or video.dim() != 4:
        shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise ValueError(f"video must be a (C, T, H, W) tensor, got {shape}")


def _crop(video: torch.Tensor, top: int, left: int, h: int, w: int) -> torch.Tensor:
    _, _, height, width = video.shape
    if h > height or w > width:
        raise ValueError(f"crop ({h}, {w}) is larger than the video frames ({height}, {width}); "
                         "resize first (resize_short_side)")
    return video[:, :, top: top + h, left: left + w]


def center_crop(video: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Centre crop of every frame of a (C, T, H, W) video to ``size`` (int or (h, w))."""
    _check_video(video)
    h, w = _size2(size)
    return _crop(video, (video.shape[2] - h) // 2, (video.shape[3] - w) // 2, h, w)


def three_crops(video: torch.Tensor, size: int | Sequence[int]) -> list[torch.Tensor]:
    """Three crops along the longer side (left/centre/right, or top/centre/bottom for tall frames),
    centred on the shorter side; the usual 3-crop test protocol after ``resize_short_side``."""
    _check_video(video)
    h, w = _size2(size)
    height, width = video.shape[2], video.shape[3]
    if width >= height:
        top = (height - h) // 2
        return [_crop(video, top, left, h, w) for left in (0, (width - w) // 2, width - w)]
    left = (width - w) // 2
    return [_crop(video, top, left, h, w) for top in (0, (height - h) // 2, height - h)]


def _resize(video: torch.Tensor, h: int, w: int, mode: str) -> torch.Tensor:
    frames = video.permute(1, 0, 2, 3)  # (T, C, H, W): frames as the batch
    dtype = frames.dtype
    if not dtype.is_floating_point:
        frames = frames.float()
    kwargs = {"align_corners": False, "antialias": True} if mode in ("bilinear", "bicubic") else {}
    out = F.interpolate(frames, size=(h, w), mode=mode, **kwargs)
    if not dtype.is_floating_point:
        info = torch.iinfo(dtype)
        out = out.round_().clamp_(info.min, info.max).to(dtype)
    return out.permute(1, 0, 2, 3).contiguous()


def resize_short_side(video: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """Resize every frame of a (C, T, H, W) video so its shorter side is ``size`` (aspect ratio kept;
    bilinear with antialiasing; integer videos are resized in float and rounded back)."""
    _check_video(video)
    if int(size) != size or size < 1:
        raise ValueError(f"resize_short_side: size must be a positive int, got {size!r}")
    height, width = video.shape[2], video.shape[3]
    if height <= width:
        h, w = int(size), max(1, int(round(width * size / height)))
    else:
        h, w = max(1, int(round(height * size / width))), int(size)
    return _resize(video, h, w, mode)


def random_resized_crop(video: torch.Tensor, size: int | Sequence[int],
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), rng: Seed = None,
                        mode: str = "bilinear") -> torch.Tensor:
    """Inception-style crop: a box of random area fraction in ``scale`` and aspect ratio (w/h, drawn
    log-uniformly) in ``ratio``, the same for every frame, resized to ``size``. Falls back to the
    largest centred box of clamped aspect ratio after 10 failed draws (as torchvision does)."""
    _check_video(video)
    out_h, out_w = _size2(size)
    if not (0 < scale[0] <= scale[1] <= 1) or not (0 < ratio[0] <= ratio[1]):
        raise ValueError(f"random_resized_crop: bad scale {scale!r} or ratio {ratio!r}")
    gen = _rng(rng)
    height, width = int(video.shape[2]), int(video.shape[3])
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * gen.uniform(scale[0], scale[1])
        aspect = math.exp(gen.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(gen.integers(0, height - h + 1))
            left = int(gen.integers(0, width - w + 1))
            break
    else:
        in_ratio = width / height
        if in_ratio < ratio[0]:
            w, h = width, int(round(width / ratio[0]))
        elif in_ratio > ratio[1]:
            h, w = height, int(round(height * ratio[1]))
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
    return _resize(_crop(video, top, left, h, w), out_h, out_w, mode)
