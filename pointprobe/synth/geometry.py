"""Triangle-mesh primitives and objects for the synthetic ScanNet-like scenes (see ``pointprobe.synth``).

Every primitive returns ``(vertices (V,3) float64, triangles (T,3) int64)`` with outward-facing
triangle winding, subdivided so that no edge is much longer than ``spacing`` metres.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

Mesh = tuple[np.ndarray, np.ndarray]


def ticks(length: float, spacing: float, breaks: tuple[float, ...] | list[float] = ()) -> np.ndarray:
    """Grid positions in [0, length] at most ``spacing`` apart, including every break point."""
    pts = sorted({0.0, float(length), *[float(b) for b in breaks if 0.0 < b < length]})
    out = [0.0]
    for a, b in zip(pts[:-1], pts[1:]):
        n = max(1, math.ceil((b - a) / spacing - 1e-9))
        out.extend(a + (b - a) * np.arange(1, n + 1) / n)
    return np.asarray(out)


def rect(
    origin,
    u,
    v,
    spacing: float,
    holes: list[tuple[float, float, float, float]] | None = None,
    flip: bool = False,
) -> Mesh:
    """A subdivided parallelogram ``origin + a*u + b*v`` (normal along u x v, or reversed with ``flip``).

    ``holes``: rectangles (a0, a1, b0, b1) in metres along u and v whose cells are removed.
    """
    origin, u, v = (np.asarray(x, np.float64) for x in (origin, u, v))
    lu, lv = float(np.linalg.norm(u)), float(np.linalg.norm(v))
    holes = holes or []
    au = ticks(lu, spacing, [h for r in holes for h in r[:2]])
    av = ticks(lv, spacing, [h for r in holes for h in r[2:]])
    nu, nv = len(au), len(av)
    verts = origin + (au[:, None, None] / lu) * u + (av[None, :, None] / lv) * v
    verts = verts.reshape(-1, 3)
    i, j = np.meshgrid(np.arange(nu - 1), np.arange(nv - 1), indexing="ij")
    a = i * nv + j
    b = (i + 1) * nv + j
    c = (i + 1) * nv + j + 1
    d = i * nv + j + 1
    keep = np.ones(a.shape, bool)
    if holes:
        cu = 0.5 * (au[:-1] + au[1:])[:, None]
        cv = 0.5 * (av[:-1] + av[1:])[None, :]
        for a0, a1, b0, b1 in holes:
            keep &= ~((cu > a0) & (cu < a1) & (cv > b0) & (cv < b1))
    a, b, c, d = a[keep], b[keep], c[keep], d[keep]
    tris = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)], axis=0)
    if flip:
        tris = tris[:, ::-1]
    if holes:
        return compact(verts, tris)
    return verts, tris


def compact(verts: np.ndarray, tris: np.ndarray) -> Mesh:
    """Drop vertices no triangle uses."""
    used = np.unique(tris)
    remap = np.full(len(verts), -1, np.int64)
    remap[used] = np.arange(len(used))
    return verts[used], remap[tris]


def merge(*meshes: Mesh) -> Mesh:
    """Concatenate meshes into one (vertices not welded)."""
    vs, ts, off = [], [], 0
    for v, t in meshes:
        vs.append(v)
        ts.append(t + off)
        off += len(v)
    if not vs:
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64)
    return np.concatenate(vs), np.concatenate(ts)


def box(
    lo,
    hi,
    spacing: float,
    bottom: bool = True,
    top: bool = True,
    top_holes: list[tuple[float, float, float, float]] | None = None,
    skip: tuple[str, ...] = (),
) -> Mesh:
    """Axis-aligned box [lo, hi] with outward normals; faces can be skipped by name (-x,+x,-y,+y)."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    dx, dy, dz = hi - lo
    ex, ey, ez = np.array([dx, 0, 0]), np.array([0, dy, 0]), np.array([0, 0, dz])
    parts = []
    if bottom:
        parts.append(rect(lo, ey, ex, spacing))
    if top:
        holes = None
        if top_holes:  # holes given as (x0, x1, y0, y1) relative to lo
            holes = top_holes
        parts.append(rect(lo + ez, ex, ey, spacing, holes=holes))
    faces = {"-y": (lo, ex, ez), "+y": (lo + ey, ez, ex), "-x": (lo, ez, ey), "+x": (lo + ex, ey, ez)}
    for k, (o, a, b) in faces.items():
        if k not in skip:
            parts.append(rect(o, a, b, spacing))
    return merge(*parts)


def _axis_frame(axis) -> np.ndarray:
    """Rotation whose third column is the unit ``axis``."""
    z = np.asarray(axis, np.float64)
    z = z / np.linalg.norm(z)
    helper = np.array([1.0, 0, 0]) if abs(z[0]) < 0.9 else np.array([0, 1.0, 0])
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


def disk(
    radius: float,
    spacing: float,
    n_angle: int,
    z: float = 0.0,
    up: bool = True,
    scale_y: float = 1.0,
    inner: float = 0.0,
) -> Mesh:
    """A (possibly elliptic, possibly annular) disk in the plane z, normal +z (or -z)."""
    n_r = max(1, math.ceil((radius - inner) / spacing))
    ang = np.linspace(0, 2 * np.pi, n_angle, endpoint=False)
    radii = inner + (radius - inner) * np.arange(0 if inner > 0 else 1, n_r + 1) / n_r
    ring = np.stack(
        [
            np.outer(radii, np.cos(ang)),
            np.outer(radii, np.sin(ang)) * scale_y,
            np.full((len(radii), n_angle), z),
        ],
        axis=-1,
    ).reshape(-1, 3)
    tris = []
    j = np.arange(n_angle)
    jn = (j + 1) % n_angle
    if inner <= 0:
        verts = np.concatenate([[[0.0, 0.0, z]], ring])
        tris.append(np.stack([np.zeros(n_angle, np.int64), 1 + j, 1 + jn], 1))
        base = 1
    else:
        verts = ring
        base = 0
    for k in range(len(radii) - 1):
        a = base + k * n_angle + j
        b = base + k * n_angle + jn
        c = base + (k + 1) * n_angle + jn
        d = base + (k + 1) * n_angle + j
        tris += [np.stack([a, b, c], 1), np.stack([a, c, d], 1)]
    t = np.concatenate(tris)
    return verts, (t if up else t[:, ::-1])


def cylinder(
    center,
    radius: float,
    height: float,
    spacing: float,
    axis=(0, 0, 1),
    caps: tuple[bool, bool] = (True, True),
    scale_y: float = 1.0,
    inward: bool = False,
) -> Mesh:
    """Cylinder from ``center`` along ``axis`` (elliptic with ``scale_y``), optional end caps."""
    n_a = max(8, math.ceil(2 * np.pi * radius / spacing))
    n_h = max(1, math.ceil(height / spacing))
    ang = np.linspace(0, 2 * np.pi, n_a, endpoint=False)
    zs = np.linspace(0, height, n_h + 1)
    circ = np.stack([radius * np.cos(ang), radius * np.sin(ang) * scale_y], 1)
    verts = np.concatenate([np.column_stack([circ, np.full(n_a, z)]) for z in zs])
    i, j = np.meshgrid(np.arange(n_h), np.arange(n_a), indexing="ij")
    jn = (j + 1) % n_a
    a, b, c, d = i * n_a + j, i * n_a + jn, (i + 1) * n_a + jn, (i + 1) * n_a + j
    tris = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    if inward:
        tris = tris[:, ::-1]
    parts = [(verts, tris)]
    if caps[0]:
        parts.append(disk(radius, spacing, n_a, 0.0, up=False, scale_y=scale_y))
    if caps[1]:
        parts.append(disk(radius, spacing, n_a, height, up=True, scale_y=scale_y))
    v, t = merge(*parts)
    R = _axis_frame(axis)
    return v @ R.T + np.asarray(center, np.float64), t


def wavy_sheet(origin, u, v, spacing: float, amplitude: float, wavelength: float, phase: float = 0.0) -> Mesh:
    """A rectangle folded like a curtain: offset along its normal by a sine of the position along u."""
    v_, t = rect(origin, u, v, spacing * 0.7)
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    n = np.cross(u, v)
    n /= np.linalg.norm(n)
    s = (v_ - np.asarray(origin, np.float64)) @ (u / np.linalg.norm(u))
    return v_ + np.outer(amplitude * np.sin(2 * np.pi * s / wavelength + phase), n), t


def basin(lo, hi, wall: float, floor: float, spacing: float, rim: bool = True, outer: bool = True) -> Mesh:
    """An open-top hollow box (tub / sink bowl): outer sides, inner sides facing in, inner floor, rim."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    ilo = np.array([lo[0] + wall, lo[1] + wall, lo[2] + floor])
    ihi = np.array([hi[0] - wall, hi[1] - wall, hi[2]])
    parts = []
    if outer:
        parts.append(box(lo, hi, spacing, bottom=False, top=False))
    iv, it = box(ilo, ihi, spacing, bottom=False, top=False)
    parts.append((iv, it[:, ::-1]))
    d = ihi - ilo
    parts.append(rect(ilo, [d[0], 0, 0], [0, d[1], 0], spacing))  # inner floor, normal +z
    if rim:
        w = hi - lo
        parts.append(
            rect(
                [lo[0], lo[1], hi[2]],
                [w[0], 0, 0],
                [0, w[1], 0],
                spacing,
                holes=[(wall, w[0] - wall, wall, w[1] - wall)],
            )
        )
    return merge(*parts)


def rot_z(yaw: float) -> np.ndarray:
    """3x3 rotation about +z."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# ---------------------------------------------------------------------------------------------- objects
@dataclasses.dataclass
class Part:
    verts: np.ndarray
    tris: np.ndarray
    color: np.ndarray  # (3,) or (V, 3), 0..255 float


@dataclasses.dataclass
class Obj:
    """One annotated object: a raw ScanNet category and its coloured parts (in its own frame)."""

    label: str
    parts: list[Part] = dataclasses.field(default_factory=list)
    annotated: bool = True

    def add(self, mesh: Mesh, color) -> Obj:
        v, t = mesh
        self.parts.append(
            Part(np.asarray(v, np.float64), np.asarray(t, np.int64), np.asarray(color, np.float64))
        )
        return self

    def transform(self, yaw: float, offset) -> Obj:
        """Rotate about z by ``yaw`` then translate by ``offset`` (in place)."""
        R = rot_z(yaw)
        off = np.asarray(offset, np.float64)
        for p in self.parts:
            p.verts = p.verts @ R.T + off
        return self

    def num_vertices(self) -> int:
        return sum(len(p.verts) for p in self.parts)
