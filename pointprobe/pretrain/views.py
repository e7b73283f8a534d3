"""Views of a scene for Sonata-style self-distillation: crops, augmentations, masks, batching, pairs.

Per scene (all randomness from one ``numpy.random.Generator``, which the trainer keys by
(seed, step, batch position, scene index), never by rank):

1. grid sampling at ``grid_size`` (one random point per voxel); the kept coordinates are the
   *original* coordinates used to match points across views;
2. colour jitter + chromatic translation shared by the global views (local views get their own);
3. 2 global crops (k nearest points to a random centre, ``global_scale`` of the points) and 4 local
   crops (``local_scale``), the second global and the local centres inside the first global crop;
4. per view: centre shift, random scale, z rotation, small x/y rotations, flips, jitter, then a second
   grid sampling (augmented points can share a voxel) that gives ``grid_coord``;
5. a masked copy of each global view: cubic grid patches (``mask_size`` side) masked at
   ``mask_ratio``, masked points' coordinates jittered (``mask_jitter_sigma``, clipped), re-gridded;
   with ``disjoint_masks`` K >= 2 (DMJD) K masked copies instead, whose masks split the patches into K
   disjoint parts covering the view (every point masked in exactly one copy).

Input feature per point: ``concat(coord, color / 255, normal)`` (9 channels), as the encoders expect.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.spatial import cKDTree

from common.errors import InputError
from common.sampling import grid_patch_mask, grid_sample, sphere_crop
from common.scatter import segment_reduce
from pointprobe.models.structure import PointBatch

__all__ = [
    "ViewConfig",
    "View",
    "SceneViews",
    "make_scene_views",
    "collate_views",
    "ViewBatch",
    "level_mean",
    "match_views",
    "disjoint_patch_masks",
    "color_jitter",
    "augment_geometry",
]


@dataclass
class ViewConfig:
    """View generation settings (Pointcept ``MultiViewGenerator`` of the Sonata recipe)."""

    grid_size: float = 0.02
    max_points: int = 65536  # crop sizes are fractions of min(max_points, scene points)
    global_views: int = 2
    local_views: int = 4
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.1, 0.4)
    center_height_scale: tuple[float, float] = (0.0, 1.0)
    min_points: int = 32  # smallest crop (points)
    # geometry
    scale: tuple[float, float] = (0.9, 1.1)
    rotate_z: float = 1.0  # max |angle| / pi
    rotate_xy: float = 1.0 / 64
    rotate_p: float = 0.8
    flip_p: float = 0.5
    jitter_sigma: float = 0.005
    jitter_clip: float = 0.02
    # colour
    color_jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.02
    chromatic_translation_p: float = 0.95
    chromatic_translation_ratio: float = 0.05
    # masking
    mask_jitter_sigma: float = 0.01
    mask_jitter_clip: float = 0.02


@dataclass
class View:
    """One view: augmented ``coord`` (n,3), ``origin`` (n,3) original coordinates, ``grid_coord`` (n,3)
    int64, ``feat`` (n,9) float32, ``mask`` (n,) bool or None, ``seed`` (drop-path key)."""

    coord: np.ndarray
    origin: np.ndarray
    grid_coord: np.ndarray
    feat: np.ndarray
    mask: np.ndarray | None = None
    seed: int = 0

    def __len__(self) -> int:
        return int(self.coord.shape[0])


@dataclass
class SceneViews:
    """The views of one scene: ``globals_`` (teacher input), ``masked`` (student, K per global view,
    global-view-major; K = 1 unless disjoint masks), ``locals_`` (student)."""

    globals_: list[View]
    masked: list[View]
    locals_: list[View]
    name: str = ""


# --------------------------------------------------------------------------------------------- colour
def _luminance(c: np.ndarray) -> np.ndarray:
    return c @ np.array([0.299, 0.587, 0.114])


def color_jitter(color: np.ndarray, cfg: ViewConfig, rng: np.random.Generator) -> np.ndarray:
    """Colour jitter (brightness, contrast, saturation, hue; probability ``color_jitter_p``) then a
    chromatic translation; ``color`` (n,3) in [0, 255] -> float64 (n,3) in [0, 255]."""
    c = color.astype(np.float64)
    if rng.random() < cfg.color_jitter_p:
        b = rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
        ct = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
        s = rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)
        h = rng.uniform(-cfg.hue, cfg.hue)
        c = np.clip(c * b, 0, 255)
        m = _luminance(c).mean() if len(c) else 0.0
        c = np.clip((c - m) * ct + m, 0, 255)
        g = _luminance(c)[:, None]
        c = np.clip((c - g) * s + g, 0, 255)
        if h != 0.0:  # hue rotation in YIQ space
            to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
            a = 2 * math.pi * h
            rot = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
            m3 = np.linalg.inv(to_yiq) @ rot @ to_yiq
            c = np.clip(c @ m3.T, 0, 255)
    if rng.random() < cfg.chromatic_translation_p:
        tr = (rng.random(3) - 0.5) * 255 * 2 * cfg.chromatic_translation_ratio
        c = np.clip(c + tr, 0, 255)
    return c


# ------------------------------------------------------------------------------------------- geometry
def _rot(axis: int, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    if axis == 0:
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == 1:
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def augment_geometry(coord: np.ndarray, normal: np.ndarray, cfg: ViewConfig,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Centre shift (x, y centred on the box middle, min z = 0), scale, z rotation (about the origin),
    x / y rotations (about the box centre), x / y flips, then clipped Gaussian jitter. Normals follow
    the rotations and flips."""
    c = coord.astype(np.float64)
    lo, hi = c.min(0), c.max(0)
    c = c - np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]])
    c = c * rng.uniform(*cfg.scale)
    n = normal.astype(np.float64)
    if rng.random() < cfg.rotate_p:
        r = _rot(2, rng.uniform(-cfg.rotate_z, cfg.rotate_z) * math.pi)
        c, n = c @ r.T, n @ r.T
    for axis in (0, 1):
        if rng.random() < cfg.rotate_p:
            r = _rot(axis, rng.uniform(-cfg.rotate_xy, cfg.rotate_xy) * math.pi)
            ctr = (c.min(0) + c.max(0)) / 2
            c, n = (c - ctr) @ r.T + ctr, n @ r.T
    for axis in (0, 1):
        if rng.random() < cfg.flip_p:
            c[:, axis] = -c[:, axis]
            n[:, axis] = -n[:, axis]
    if cfg.jitter_sigma > 0:
        c = c + np.clip(cfg.jitter_sigma * rng.standard_normal(c.shape), -cfg.jitter_clip, cfg.jitter_clip)
    return c, n


def _finish_view(coord: np.ndarray, origin: np.ndarray, color01: np.ndarray, normal: np.ndarray,
                 cfg: ViewConfig, rng: np.random.Generator, mask: np.ndarray | None = None,
                 feat: np.ndarray | None = None) -> View:
    """Grid-sample the augmented points (one per voxel) and build the view."""
    gs = grid_sample(coord, cfg.grid_size, mode="train", seed=rng)
    k = np.sort(gs.index)  # keep the crop's order
    grid = gs.grid_coord[np.argsort(gs.index)]
    c = coord[k].astype(np.float32)
    if feat is None:
        f = np.concatenate([c, color01[k], normal[k]], axis=1).astype(np.float32)
    else:
        f = feat[k]
    return View(coord=c, origin=origin[k].astype(np.float32), grid_coord=grid.astype(np.int64), feat=f,
                mask=None if mask is None else mask[k], seed=int(rng.integers(0, 2**62)))


def disjoint_patch_masks(coord: np.ndarray, patch_size: float, k: int,
                         rng: np.random.Generator) -> list[np.ndarray]:
    """``k`` boolean masks (N,) that partition the points: cubic patches of side ``patch_size`` (grid
    shifted by a random offset), the occupied patches randomly split into ``k`` near-equal parts."""
    if k < 1:
        raise ValueError(f"disjoint_patch_masks: k must be >= 1, got {k}")
    offset = rng.uniform(0.0, patch_size, size=3)
    cells = np.floor((coord - coord.min(axis=0) + offset) / patch_size).astype(np.int64)
    _, patch = np.unique(cells, axis=0, return_inverse=True)
    patch = patch.reshape(-1)
    n_patches = int(patch.max()) + 1 if len(patch) else 0
    part = np.empty(n_patches, dtype=np.int64)
    part[rng.permutation(n_patches)] = np.arange(n_patches) % k
    return [part[patch] == i for i in range(k)]


def _masked_copy(v: View, mask: np.ndarray, cfg: ViewConfig, rng: np.random.Generator) -> View:
    """The masked student copy of global view ``v``: masked points' coordinates jittered, re-gridded."""
    jc = v.coord.astype(np.float64)
    if cfg.mask_jitter_sigma > 0 and mask.any():
        noise = cfg.mask_jitter_sigma * rng.standard_normal((int(mask.sum()), 3))
        jc[mask] += np.clip(noise, -cfg.mask_jitter_clip, cfg.mask_jitter_clip)
    return _finish_view(jc, v.origin, None, None, cfg, rng, mask=mask, feat=v.feat)


def make_scene_views(coord: np.ndarray, color: np.ndarray, normal: np.ndarray, cfg: ViewConfig,
                     rng: np.random.Generator, mask_size: float, mask_ratio: float,
                     name: str = "", disjoint_masks: int = 1) -> SceneViews:
    """All views of one scene (see the module docstring). ``color`` in [0, 255]. ``disjoint_masks`` K >= 2:
    K masked copies of each global view with complementary masks (``mask_ratio`` unused)."""
    coord = np.asarray(coord)
    if len(coord) < cfg.min_points:
        raise InputError(name or None,
                         f"scene has {len(coord)} points, fewer than views need ({cfg.min_points})")
    gs = grid_sample(coord, cfg.grid_size, mode="train", seed=rng, source=name or None)
    idx = np.sort(gs.index)
    origin = coord[idx].astype(np.float64)
    col = np.asarray(color)[idx]
    nor = np.asarray(normal)[idx].astype(np.float64)
    n = len(origin)
    cap = min(cfg.max_points, n)

    def size(scale: tuple[float, float]) -> int:
        return int(min(n, max(cfg.min_points, int(rng.uniform(*scale) * cap))))

    z = origin[:, 2]
    z_lo = z.min() + (z.max() - z.min()) * cfg.center_height_scale[0]
    z_hi = z.min() + (z.max() - z.min()) * cfg.center_height_scale[1]
    candidates = np.flatnonzero((z >= z_lo) & (z <= z_hi))
    if len(candidates) == 0:
        candidates = np.arange(n)
    major = sphere_crop(origin, size(cfg.global_scale), center=origin[rng.choice(candidates)], rng=rng)
    crops_g = [major]
    for _ in range(cfg.global_views - 1):
        crops_g.append(sphere_crop(origin, size(cfg.global_scale), center=origin[rng.choice(major)], rng=rng))
    crops_l = []
    covered = np.zeros(n, dtype=bool)
    in_major = np.zeros(n, dtype=bool)
    in_major[major] = True
    for _ in range(cfg.local_views):
        free = np.flatnonzero(in_major & ~covered)
        if len(free) == 0:
            covered[:] = False
            free = major
        crop = sphere_crop(origin, size(cfg.local_scale), center=origin[rng.choice(free)], rng=rng)
        crops_l.append(crop)
        covered[crop] = True

    shared = color_jitter(col, cfg, rng) / 255.0
    globals_, masked = [], []
    for crop in crops_g:
        c_aug, n_aug = augment_geometry(origin[crop], nor[crop], cfg, rng)
        v = _finish_view(c_aug, origin[crop], shared[crop], n_aug, cfg, rng)
        globals_.append(v)
        if disjoint_masks > 1:
            for mask in disjoint_patch_masks(v.coord, mask_size, disjoint_masks, rng):
                masked.append(_masked_copy(v, mask, cfg, rng))
        else:
            masked.append(_masked_copy(v, grid_patch_mask(v.coord, mask_size, mask_ratio, rng), cfg, rng))
    locals_ = []
    for crop in crops_l:
        c_aug, n_aug = augment_geometry(origin[crop], nor[crop], cfg, rng)
        col_l = color_jitter(col[crop], cfg, rng) / 255.0
        locals_.append(_finish_view(c_aug, origin[crop], col_l, n_aug, cfg, rng))
    return SceneViews(globals_, masked, locals_, name)


# ------------------------------------------------------------------------------------------- batching
@dataclass
class ViewBatch:
    """The micro-batch fed to teacher (``teacher``: global views) and student (``masked``, ``local``).

    ``*_origin`` (rows, 3) original coordinates; view order: scene-major (scene 0's views first).
    """

    teacher: PointBatch
    masked: PointBatch
    local: PointBatch
    teacher_origin: torch.Tensor
    masked_origin: torch.Tensor
    local_origin: torch.Tensor
    n_scenes: int
    n_global: int
    n_local: int
    extra: dict = field(default_factory=dict)
    n_mask_copies: int = 1  # masked copies per global view (DMJD's K)

    def to(self, device: torch.device) -> ViewBatch:
        def mv(p: PointBatch) -> PointBatch:
            q = PointBatch.create(p.coord.to(device), p.grid_coord.to(device), p.feat.to(device),
                                  offset=p.offset.to(device),
                                  mask=None if p.mask is None else p.mask.to(device), grid_size=p.grid_size)
            q.cache.update({k: v.to(device) for k, v in p.cache.items()})
            return q
        return ViewBatch(mv(self.teacher), mv(self.masked), mv(self.local), self.teacher_origin.to(device),
                         self.masked_origin.to(device), self.local_origin.to(device), self.n_scenes,
                         self.n_global, self.n_local, self.extra, self.n_mask_copies)


def _stack(views: list[View], grid_size: float) -> tuple[PointBatch, torch.Tensor]:
    coord = torch.from_numpy(np.concatenate([v.coord for v in views]))
    grid = torch.from_numpy(np.concatenate([v.grid_coord for v in views]))
    feat = torch.from_numpy(np.concatenate([v.feat for v in views]))
    offset = torch.from_numpy(np.cumsum([len(v) for v in views]))
    mask = None
    if views[0].mask is not None:
        mask = torch.from_numpy(np.concatenate([v.mask for v in views]))
    p = PointBatch.create(coord, grid, feat, offset=offset, mask=mask, grid_size=grid_size)
    p.cache["drop_path_seed"] = torch.tensor([v.seed for v in views], dtype=torch.int64)
    origin = torch.from_numpy(np.concatenate([v.origin for v in views]))
    return p, origin


def collate_views(scenes: list[SceneViews], grid_size: float) -> ViewBatch:
    """Concatenate the views of several scenes (scene-major order) into teacher / student batches."""
    if not scenes:
        raise ValueError("collate_views: no scenes")
    teacher, t_o = _stack([v for s in scenes for v in s.globals_], grid_size)
    masked, m_o = _stack([v for s in scenes for v in s.masked], grid_size)
    local, l_o = _stack([v for s in scenes for v in s.locals_], grid_size)
    return ViewBatch(teacher, masked, local, t_o, m_o, l_o, len(scenes), len(scenes[0].globals_),
                     len(scenes[0].locals_), extra={"names": [s.name for s in scenes]},
                     n_mask_copies=len(scenes[0].masked) // len(scenes[0].globals_))


# ------------------------------------------------------------------------------------------- matching
def level_mean(values: torch.Tensor, level: PointBatch) -> torch.Tensor:
    """Per-row mean of ``values`` (rows of the input level) over the rows pooled into each row of
    ``level`` (an encoder level reached through ``pooling_inverse`` links)."""
    chain = level.levels()
    idx = torch.arange(len(chain[0]), device=values.device)
    for node in chain[1:]:
        idx = node.pooling_inverse[idx]
    if values.shape[0] != idx.shape[0]:
        raise ValueError(f"level_mean: {values.shape[0]} values for {idx.shape[0]} input rows")
    return segment_reduce(values.float(), idx, len(level), "mean")


def match_views(q_coord: np.ndarray, q_offset: np.ndarray, r_coord: np.ndarray, r_offset: np.ndarray,
                view_pairs: list[tuple[int, int]], radius: float,
                trees: dict | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest-neighbour pairs between query views and reference views.

    For each ``(qv, rv)`` in ``view_pairs``: every row of query view ``qv`` is matched to its nearest
    row of reference view ``rv`` (Euclidean, ``q_coord`` / ``r_coord`` original coordinates) when
    closer than ``radius``. Views are delimited by cumulative ``*_offset``. Returns global row indices
    ``(q_rows, r_rows, q_view)``. ``trees`` caches the KD-trees of reference views between calls.
    """
    q_start = np.concatenate([[0], q_offset[:-1]])
    r_start = np.concatenate([[0], r_offset[:-1]])
    trees = {} if trees is None else trees
    qs, rs, gs = [], [], []
    for qv, rv in view_pairs:
        q0, q1 = int(q_start[qv]), int(q_offset[qv])
        r0, r1 = int(r_start[rv]), int(r_offset[rv])
        if q1 <= q0 or r1 <= r0:
            continue
        if rv not in trees:
            trees[rv] = cKDTree(r_coord[r0:r1])
        d, j = trees[rv].query(q_coord[q0:q1], k=1, distance_upper_bound=radius)
        ok = np.isfinite(d) & (d < radius)
        qi = np.flatnonzero(ok)
        qs.append(qi + q0)
        rs.append(j[ok] + r0)
        gs.append(np.full(len(qi), qv, dtype=np.int64))
    if not qs:
        e = np.zeros(0, dtype=np.int64)
        return e, e, e
    return np.concatenate(qs).astype(np.int64), np.concatenate(rs).astype(np.int64), np.concatenate(gs)
