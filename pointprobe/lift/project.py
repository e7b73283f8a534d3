"""Projection of 3D points into posed RGB-D frames, visibility, and multi-view feature fusion.

Conventions (ScanNet / OpenCV): a pose is the 4x4 camera-to-world matrix; camera x right, y down,
z forward. A point ``p`` (world) maps to ``c = R^T (p - t)`` (R, t of the pose) and to the pixel
``u = round(fx c_x / c_z + cx)``, ``v = round(fy c_y / c_z + cy)`` (column ``u``, row ``v``; pixel
centres at integers). Everything is vectorised over many frames at once: (F, N) projections in one
tensor expression, then only the (frame, point) pairs that land inside the image are gathered.

Visibility: a point is seen by a frame when it lies in front of the camera, its pixel is at least
``margin`` pixels from every border, the depth map has a measurement there, and the depth test of the
``VisibilityRule`` passes:

* ``openscene`` (OpenScene's multi-view fusion): ``|depth[v, u] - z| <= threshold * depth[v, u]``
  (relative, default 0.25) or ``<= threshold`` metres (absolute); every view counts the same.
* ``sensor`` (the default of ``pointprobe lift``): ``|depth[v, u] - z| <= tol_abs + tol_rel *
  depth[v, u]`` (a tolerance that follows a depth sensor's noise, 0.5 cm + 0.5 % by default, instead of a
  quarter of the depth); with point normals, views at grazing angles (``|cos(normal, ray)| < min_cos``)
  are dropped, so are views farther than ``max_depth`` (when > 0; a depth sensor's noise there is as
  large as the gaps between surfaces), and views are weighted by ``|cos|^angle_power /
  z^distance_power`` (head-on, close views count more). Two options, off by default (measured, not
  better on the oracle benchmark): ``slope_tol`` adds ``slope_tol * (z / f) * tan(incidence)`` to the
  tolerance (the depth change across a pixel footprint on a slanted surface), ``edge_tol`` drops pixels at
  a depth discontinuity (their 3x3 depth range, :func:`depth_range`, above ``edge_tol * d``).

Feature look-up: a (D, h, w) feature map covering the whole (W, H) image (patch features at any
stride) is upsampled bilinearly to pixels (``align_corners=False``, edges clamped) and read at the
point's pixel. Only the needed pixels are evaluated (four corners per pair), which equals
``F.interpolate(map, (H, W), mode="bilinear")[..., v, u]`` without materialising the (D, H, W) map.
Fusion is the (weighted) mean over the views that see a point (a running scatter-add, ``index_add_``,
of the weighted sampled features, of the weights and of a view count per point;
``common.scatter.segment_reduce`` computes the same sums but allocates an (N, D) result per call);
points seen by no view keep zero features and a zero count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = [
    "RULES",
    "VisibilityRule",
    "Projection",
    "world_to_camera",
    "project_points",
    "visible_pairs",
    "depth_range",
    "bilinear_cells",
    "sample_feature_maps",
    "FusionAccumulator",
]


RULES = ("sensor", "openscene")


@dataclass(frozen=True)
class VisibilityRule:
    """Which (frame, point) pairs count as views of a point, and how much each view weighs.

    ``openscene``: depth test ``|d - z| <= threshold * d`` (``relative``) or ``<= threshold`` m, plain
    mean. ``sensor``: ``|d - z| <= tol_abs + tol_rel * d`` (+ ``slope_tol * (z / f) * tan(theta)`` with
    normals: the depth change across one pixel's footprint on a surface slanted by ``theta`` to the ray,
    ``tan`` capped at its value at ``min_cos``), views with ``z > max_depth`` (when > 0) dropped; with
    ``edge_tol`` > 0, pixels at a depth discontinuity (valid 3x3 depth range > ``edge_tol * d``) dropped;
    with normals, drop views where ``|cos(normal, ray)| < min_cos``; weight views by
    ``|cos|^angle_power / z^distance_power``.
    """

    name: str = "sensor"
    threshold: float = 0.25
    relative: bool = True
    tol_abs: float = 0.005
    tol_rel: float = 0.005
    min_cos: float = 0.2
    angle_power: float = 1.0
    distance_power: float = 1.0
    max_depth: float = 0.0  # sensor: drop views farther than this (metres along z; 0 = no limit)
    slope_tol: float = 0.0  # sensor: + slope_tol * (z / f) * tan(incidence) on the depth tolerance
    edge_tol: float = 0.0  # sensor: drop pixels whose 3x3 depth range exceeds edge_tol * depth (0 = off)

    def __post_init__(self) -> None:
        if self.name not in RULES:
            raise ValueError(f"unknown visibility rule {self.name!r} (expected one of {', '.join(RULES)})")

    @classmethod
    def openscene(cls, threshold: float = 0.25, relative: bool = True) -> VisibilityRule:
        """OpenScene's rule (relative 0.25, plain mean) or its absolute-threshold variant."""
        return cls("openscene", threshold=float(threshold), relative=bool(relative))

    def tolerance(self) -> tuple[float, float]:
        """(absolute metres, fraction of the measured depth) of the depth test."""
        if self.name == "openscene":
            return (0.0, self.threshold) if self.relative else (self.threshold, 0.0)
        return self.tol_abs, self.tol_rel

    @property
    def weighted(self) -> bool:
        """Whether views get unequal weights or grazing views are dropped (needs normals for the angle)."""
        return self.name == "sensor"


PairHook = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]


def world_to_camera(poses: torch.Tensor) -> torch.Tensor:
    """(F, 4, 4) world-to-camera matrices from camera-to-world poses (rigid inverse: R^T, -R^T t)."""
    if poses.dim() == 2:
        poses = poses[None]
    R = poses[:, :3, :3]
    t = poses[:, :3, 3]
    out = torch.zeros_like(poses)
    out[:, :3, :3] = R.transpose(1, 2)
    out[:, :3, 3] = -(R.transpose(1, 2) @ t[:, :, None])[:, :, 0]
    out[:, 3, 3] = 1
    return out


@dataclass
class Projection:
    """Pixel coordinates (F, N) int64 ``u`` (column), ``v`` (row) and camera depth ``z`` (F, N)."""

    u: torch.Tensor
    v: torch.Tensor
    z: torch.Tensor


def _as_batched_K(K: torch.Tensor, n_frames: int) -> torch.Tensor:
    K = K[:3, :3] if K.dim() == 2 else K[:, :3, :3]
    return K.expand(n_frames, 3, 3) if K.dim() == 2 else K


def project_points(coord: torch.Tensor, w2c: torch.Tensor, K: torch.Tensor) -> Projection:
    """Project world points (N, 3) into F frames: ``w2c`` (F, 4, 4), ``K`` (3, 3) or (F, 3, 3).

    Returns rounded pixel coordinates and the camera depth; points behind the camera get z <= 0 (their
    pixels are meaningless, ``visible_pairs`` drops them).
    """
    w2c = w2c[None] if w2c.dim() == 2 else w2c
    coord = coord.to(w2c.dtype)
    cam = torch.einsum("fij,nj->fni", w2c[:, :3, :3], coord) + w2c[:, None, :3, 3]  # (F, N, 3)
    z = cam[..., 2]
    Kb = _as_batched_K(K.to(w2c.dtype), w2c.shape[0])
    zs = torch.where(z.abs() > 1e-9, z, torch.full_like(z, 1e-9))
    u = torch.round(Kb[:, 0, 0, None] * cam[..., 0] / zs + Kb[:, 0, 2, None])
    v = torch.round(Kb[:, 1, 1, None] * cam[..., 1] / zs + Kb[:, 1, 2, None])
    # clamp before the cast so points far outside the image cannot overflow int64
    lim = 1 << 30
    return Projection(u.clamp(-lim, lim).long(), v.clamp(-lim, lim).long(), z)


def visible_pairs(
    proj: Projection,
    depth: torch.Tensor,
    margin: int = 10,
    threshold: float = 0.25,
    relative: bool = True,
    min_depth: float = 1e-3,
    tolerance: tuple[float, float] | None = None,
    slack: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(frame index (P,), point index (P,)) of the (frame, point) pairs that pass the visibility test.

    ``depth`` (F, H, W) metres (0 = no measurement). Pairs are ordered by frame, then point. The depth
    test is ``|d - z| <= threshold * d`` (``relative``) or ``<= threshold``; ``tolerance`` = (a, r)
    replaces it by ``|d - z| <= a + r * d``; ``slack(f_idx, n_idx, z)`` adds a per-pair tolerance (metres)
    to either.
    """
    F_, H, W = depth.shape
    u, v, z = proj.u, proj.v, proj.z
    inside = (z > min_depth) & (u >= margin) & (u < W - margin) & (v >= margin) & (v < H - margin)
    f_idx, n_idx = inside.nonzero(as_tuple=True)
    if f_idx.numel() == 0:
        return f_idx, n_idx
    uu, vv, zz = u[f_idx, n_idx], v[f_idx, n_idx], z[f_idx, n_idx]
    d = depth[f_idx, vv, uu].to(zz.dtype)
    if tolerance is not None:
        tol = tolerance[0] + tolerance[1] * d
    else:
        tol = threshold * d if relative else torch.full_like(d, threshold)
    if slack is not None:
        tol = tol + slack(f_idx, n_idx, zz)
    ok = (d > 0) & ((d - zz).abs() <= tol)
    return f_idx[ok], n_idx[ok]


def depth_range(depth: torch.Tensor) -> torch.Tensor:
    """(F, H, W) max - min of the measured depths (> 0) in each pixel's 3x3 neighbourhood (0 where the
    neighbourhood has fewer than two measurements): large at depth discontinuities (object edges), about
    two pixel footprints times tan(incidence) on a smooth surface."""
    d = depth.float()[:, None]
    valid = d > 0
    big = torch.finfo(d.dtype).max
    hi = torch.nn.functional.max_pool2d(torch.where(valid, d, torch.zeros_like(d)), 3, 1, 1)
    lo = -torch.nn.functional.max_pool2d(torch.where(valid, -d, torch.full_like(d, -big)), 3, 1, 1)
    return (hi - lo).clamp(min=0)[:, 0]  # no measurement around: hi = 0, lo = big


def bilinear_cells(
    f_idx: torch.Tensor, u: torch.Tensor, v: torch.Tensor, image_size: tuple[int, int], grid: tuple[int, int],
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (P, 4) into ``maps.permute(0, 2, 3, 1).reshape(-1, D)`` of the 4 cells around pixel (u, v)
    of frame ``f_idx`` and their bilinear weights (P, 4) (``align_corners=False``, edges clamped);
    ``grid`` = (w, h) of the (F, D, h, w) feature maps covering images of ``image_size`` = (W, H)."""
    W, H = image_size
    w, h = grid
    sx = ((u.to(dtype) + 0.5) * (w / W) - 0.5).clamp(0, w - 1)
    sy = ((v.to(dtype) + 0.5) * (h / H) - 0.5).clamp(0, h - 1)
    x0 = sx.floor().long()
    y0 = sy.floor().long()
    x1 = (x0 + 1).clamp(max=w - 1)
    y1 = (y0 + 1).clamp(max=h - 1)
    ax = sx - x0.to(dtype)
    ay = sy - y0.to(dtype)
    base = f_idx * (h * w)
    cells = torch.stack([base + y0 * w + x0, base + y0 * w + x1, base + y1 * w + x0, base + y1 * w + x1], 1)
    weights = torch.stack([(1 - ax) * (1 - ay), ax * (1 - ay), (1 - ax) * ay, ax * ay], 1)
    return cells, weights


def sample_feature_maps(
    maps: torch.Tensor, f_idx: torch.Tensor, u: torch.Tensor, v: torch.Tensor, image_size: tuple[int, int]
) -> torch.Tensor:
    """Bilinearly upsampled features (P, D) at pixels (u, v) of frames ``f_idx``.

    ``maps`` (F, D, h, w) covers the whole image of ``image_size`` = (W, H); the result equals
    ``F.interpolate(maps, (H, W), mode="bilinear", align_corners=False)[f, :, v, u]``.
    """
    F_, D, h, w = maps.shape
    W, H = image_size
    if (h, w) == (H, W):  # stride 1: the pixel itself
        return maps.permute(0, 2, 3, 1)[f_idx, v, u]
    flat = maps.permute(0, 2, 3, 1).reshape(F_ * h * w, D)
    dt = torch.float64 if maps.dtype == torch.float64 else torch.float32
    cells, weights = bilinear_cells(f_idx, u, v, image_size, (w, h), dt)
    return (flat[cells] * weights[..., None].to(flat.dtype)).sum(1)


class FusionAccumulator:
    """Running weighted sum of features, weights and view count per point; ``mean()`` gives the fused
    features.

    ``add(maps, depth, w2c, K_depth, K_color)`` handles one batch of F frames: projects every point
    into every frame at once, keeps the visible pairs and adds their sampled features. With
    ``K_color`` given (a colour camera whose intrinsics differ from the depth camera's, both scaled to
    the feature image size), visibility uses the depth projection and features are read at the colour
    projection (pairs whose colour pixel falls outside the image are dropped). ``rule`` (default:
    OpenScene's with ``threshold``/``relative``) decides visibility and view weights; ``normal`` (N, 3)
    point normals enable its grazing-angle test and angle weight (zero normals count as head-on).
    """

    def __init__(self, coord: torch.Tensor, dim: int, margin: int = 10, threshold: float = 0.25,
                 relative: bool = True, point_chunk: int = 262_144, device: torch.device | str = "cpu",
                 rule: VisibilityRule | None = None, normal: torch.Tensor | None = None):
        self.device = torch.device(device)
        self.coord = coord.to(self.device, torch.float32)
        self.n = int(coord.shape[0])
        self.sum = torch.zeros(self.n, dim, dtype=torch.float32, device=self.device)
        self.weight = torch.zeros(self.n, dtype=torch.float32, device=self.device)
        self.count = torch.zeros(self.n, dtype=torch.int64, device=self.device)
        self.rule = rule if rule is not None else VisibilityRule.openscene(threshold, relative)
        self.margin, self.threshold, self.relative = int(margin), float(threshold), bool(relative)
        self.normal = None
        if normal is not None:
            if tuple(normal.shape) != (self.n, 3):
                raise ValueError(f"normals have shape {tuple(normal.shape)}, expected ({self.n}, 3)")
            nrm = normal.to(self.device, torch.float32)
            length = nrm.norm(dim=1, keepdim=True)
            self.normal = torch.where(length > 0.5, nrm / length.clamp(min=1e-12), torch.zeros_like(nrm))
        self.point_chunk = max(1, int(point_chunk))
        self.pairs = 0  # visible (frame, point) pairs fused so far
        self.projections = 0  # (frame, point) projections computed so far

    @staticmethod
    def _cos(pts: torch.Tensor, nrm: torch.Tensor, w2c: torch.Tensor, f_idx: torch.Tensor,
             n_idx: torch.Tensor) -> torch.Tensor:
        """|cos(normal, ray)| of pairs (1 where a point has no normal: head-on)."""
        R, t = w2c[:, :3, :3], w2c[:, :3, 3]
        centre = -(R.transpose(1, 2) @ t[:, :, None])[:, :, 0]  # camera centres (F, 3)
        ray = pts[n_idx] - centre[f_idx]
        n = nrm[n_idx]
        cos = (n * ray).sum(1).abs() / ray.norm(dim=1).clamp(min=1e-9)
        return torch.where(n.abs().sum(1) > 0, cos, torch.ones_like(cos))

    def _slack(self, pts: torch.Tensor, nrm: torch.Tensor, w2c: torch.Tensor, K: torch.Tensor):
        """Per-pair depth tolerance of a pixel footprint on a slanted surface: ``slope_tol * (z / f) *
        tan(theta)``, ``tan`` capped at its value at ``min_cos`` (grazing views are dropped anyway)."""
        r = self.rule
        fx = _as_batched_K(K, w2c.shape[0])[:, 0, 0]
        c_min = max(r.min_cos, 0.05)
        tan_max = (1 - c_min**2) ** 0.5 / c_min

        def slack(f_idx: torch.Tensor, n_idx: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            cos = self._cos(pts, nrm, w2c, f_idx, n_idx).clamp(min=1e-6)
            tan = ((1 - cos**2).clamp(min=0).sqrt() / cos).clamp(max=tan_max)
            return r.slope_tol * z / fx[f_idx] * tan

        return slack

    def _weights(self, pts: torch.Tensor, nrm: torch.Tensor | None, w2c: torch.Tensor, f_idx: torch.Tensor,
                 n_idx: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(keep mask, weight) of visible pairs under the rule (grazing test, angle and distance weight)."""
        r = self.rule
        w = z.clamp(min=1e-3).pow(-r.distance_power) if r.distance_power else torch.ones_like(z)
        keep = z <= r.max_depth if r.max_depth > 0 else torch.ones_like(z, dtype=torch.bool)
        if nrm is not None:
            cos = self._cos(pts, nrm, w2c, f_idx, n_idx)
            keep = keep & (cos >= r.min_cos)
            if r.angle_power:
                w = w * cos.clamp(min=1e-6).pow(r.angle_power)
        return keep, w

    def add(self, maps: torch.Tensor, depth: torch.Tensor, w2c: torch.Tensor, K_depth: torch.Tensor,
            K_color: torch.Tensor | None = None, hook: PairHook | None = None) -> None:
        """Fuse one batch: ``maps`` (F, D, h, w), ``depth`` (F, H, W), ``w2c`` (F, 4, 4), ``K`` (3, 3)
        or (F, 3, 3). ``hook(f_idx, point_idx, u, v, weight)`` sees every fused pair (frame index in the
        batch, point index, pixel where the feature is read, view weight)."""
        dev = self.device
        maps, depth = maps.to(dev), depth.to(dev)
        w2c = w2c.to(dev, torch.float32)  # float32: sub-micron error for room-sized coordinates
        K_depth = K_depth.to(dev, torch.float32)
        H, W = depth.shape[-2:]
        F_, D, h, w = maps.shape
        flat = None if (h, w) == (H, W) else maps.permute(0, 2, 3, 1).reshape(F_ * h * w, D).float()
        tol = self.rule.tolerance()
        sensor = self.rule.weighted
        edge = depth_range(depth) if sensor and self.rule.edge_tol > 0 else None
        for start in range(0, self.n, self.point_chunk):
            pts = self.coord[start : start + self.point_chunk]
            nrm = None if self.normal is None else self.normal[start : start + self.point_chunk]
            proj = project_points(pts, w2c, K_depth)
            slack = (self._slack(pts, nrm, w2c, K_depth)
                     if sensor and nrm is not None and self.rule.slope_tol > 0 else None)
            f_idx, n_idx = visible_pairs(proj, depth, self.margin, tolerance=tol, slack=slack)
            self.projections += int(proj.z.numel())
            if edge is not None and f_idx.numel():
                uu, vv = proj.u[f_idx, n_idx], proj.v[f_idx, n_idx]
                flat_ok = edge[f_idx, vv, uu] <= self.rule.edge_tol * depth[f_idx, vv, uu]
                f_idx, n_idx = f_idx[flat_ok], n_idx[flat_ok]
            wt = torch.ones(f_idx.numel(), dtype=torch.float32, device=dev)
            if sensor and f_idx.numel():
                keep, wt = self._weights(pts, nrm, w2c, f_idx, n_idx, proj.z[f_idx, n_idx])
                f_idx, n_idx, wt = f_idx[keep], n_idx[keep], wt[keep]
            if K_color is not None:
                pc = project_points(pts, w2c, K_color.to(dev, torch.float32))
                u, v = pc.u[f_idx, n_idx], pc.v[f_idx, n_idx]
                ok = (u >= 0) & (u < W) & (v >= 0) & (v < H)
                f_idx, n_idx, u, v, wt = f_idx[ok], n_idx[ok], u[ok], v[ok], wt[ok]
            else:
                u, v = proj.u[f_idx, n_idx], proj.v[f_idx, n_idx]
            if f_idx.numel() == 0:
                continue
            idx = n_idx + start
            self._accumulate(maps, flat, f_idx, u, v, idx, (W, H), wt)
            self.weight.index_add_(0, idx, wt)
            self.count.index_add_(0, idx, torch.ones_like(idx))
            self.pairs += int(idx.numel())
            if hook is not None:
                hook(f_idx, idx, u, v, wt)

    def _accumulate(self, maps: torch.Tensor, flat: torch.Tensor | None, f_idx: torch.Tensor, u: torch.Tensor,
                    v: torch.Tensor, idx: torch.Tensor, image_size: tuple[int, int],
                    wt: torch.Tensor) -> None:
        """Add the bilinearly read, ``wt``-weighted features of pairs (f_idx, u, v) to the rows ``idx`` of
        ``sum``.

        Stride 1: a plain gather. Coarser maps: the reads are a sparse (points x cells) matrix of bilinear
        weights (4 per pair) times the (cells x D) feature table, one ``torch.sparse.mm`` per batch, so no
        (pairs x 4 x D) temporaries are made (this is what makes wide ViT features fast).
        """
        if flat is None:
            self.sum.index_add_(0, idx, maps.permute(0, 2, 3, 1)[f_idx, v, u].float() * wt[:, None])
            return
        h, w = maps.shape[2:]
        cells, weights = bilinear_cells(f_idx, u, v, image_size, (w, h))
        weights = weights * wt[:, None]
        rows, inv = torch.unique(idx, return_inverse=True)
        S = torch.sparse_coo_tensor(torch.stack([inv.repeat_interleave(4), cells.reshape(-1)]),
                                    weights.reshape(-1), (rows.numel(), flat.shape[0]),
                                    check_invariants=False)
        self.sum.index_add_(0, rows, torch.sparse.mm(S, flat))

    def mean(self) -> torch.Tensor:
        """(N, D) fused features (weighted mean over views); rows of points seen by no view are zero."""
        return self.sum / self.weight.clamp(min=1e-30)[:, None]
