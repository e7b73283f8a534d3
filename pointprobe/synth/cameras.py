"""Camera paths through a generated room, pinhole intrinsics and the ray-cast RGB-D renderer."""

from __future__ import annotations

import math

import numpy as np

from pointprobe.synth.rooms import Room

CAMERA_PATHS = ("walk", "loop")


def _pose(p: np.ndarray, z: float, yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Camera-to-room pose (OpenCV axes) at (p, z) looking along yaw/pitch, rolled by ``roll``."""
    fwd = np.array([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), np.sin(pitch)])
    right = np.cross(fwd, [0, 0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    r2 = np.cos(roll) * right + np.sin(roll) * down
    d2 = -np.sin(roll) * right + np.cos(roll) * down
    T = np.eye(4)
    T[:3, :3] = np.stack([r2, d2, fwd], axis=1)
    T[:3, 3] = [p[0], p[1], z]
    return T


def camera_poses(room: Room, rng: np.random.Generator, n: int, path: str = "walk") -> list[np.ndarray]:
    """Camera-to-room poses of ``n`` frames along ``path``.

    ``walk`` (default), like a hand-held scan: one lap along the walls (about 0.4 m in from them, moved
    towards the centre where furniture is in the way), at heights 1.15-1.75 m; each frame looks either
    across the room at a point of the far side at any height up its wall, or inwards at the floor and
    furniture of the middle (pitches from -0.85 to +0.1 rad). ``loop`` (the generator's first path): a
    small loop around the centre, looking outwards.
    """
    if path not in CAMERA_PATHS:
        raise ValueError(f"unknown camera path {path!r} (expected one of {', '.join(CAMERA_PATHS)})")
    if path == "loop":
        return _camera_loop(room, rng, n)
    poses = []
    c = np.array([room.W / 2, room.D / 2])
    ix, iy = min(0.4, 0.3 * room.W), min(0.4, 0.3 * room.D)
    w, d = room.W - 2 * ix, room.D - 2 * iy
    perim = 2 * (w + d)
    s0, sgn = rng.uniform(0, perim), float(rng.choice([-1.0, 1.0]))

    def on_lap(s: float) -> np.ndarray:
        s = s % perim
        for origin, step, length in (((ix, iy), (1, 0), w), ((ix + w, iy), (0, 1), d),
                                     ((ix + w, iy + d), (-1, 0), w), ((ix, iy + d), (0, -1), d)):
            if s <= length:
                return np.asarray(origin, float) + s * np.asarray(step, float)
            s -= length
        return np.array([ix, iy])

    for k in range(n):
        s = s0 + sgn * perim * (k + rng.uniform(-0.3, 0.3)) / max(n, 1)
        z = rng.uniform(1.15, 1.75)
        p = _free_spot(room, on_lap(s), z)
        if rng.random() < 0.5:  # across: the far side of the room, anywhere up its wall
            target = c + (c - p) * rng.uniform(0.6, 1.2) + rng.normal(0, 0.25, 2) * [room.W, room.D]
            aim = rng.uniform(0.2, room.H - 0.2)
        else:  # inwards: the floor and furniture in the middle of the room
            target = c + rng.uniform(-0.3, 0.3, 2) * [room.W, room.D]
            aim = rng.uniform(0.0, 0.8)
        target = np.clip(target, 0.1, [room.W - 0.1, room.D - 0.1])
        to = target - p
        if np.linalg.norm(to) < 0.5:  # standing on the target: look at the centre or along the lap
            to = c - p if np.linalg.norm(c - p) > 0.3 else np.array([np.cos(s), np.sin(s)])
        yaw = math.atan2(to[1], to[0]) + rng.normal(0, 0.1)
        pitch = float(np.clip(-math.atan2(z - aim, max(np.linalg.norm(to), 0.5)), -0.85, 0.1))
        poses.append(_pose(p, z, yaw, pitch, rng.normal(0, 0.03)))
    return poses


def _camera_loop(room: Room, rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """Camera-to-room poses on a loop around the room centre, looking outwards and slightly down."""
    poses = []
    c = np.array([room.W / 2, room.D / 2])
    a, b = 0.18 * room.W, 0.18 * room.D
    th0, sgn = rng.uniform(0, 2 * np.pi), float(rng.choice([-1.0, 1.0]))
    for k in range(n):
        th = th0 + sgn * 2 * np.pi * k / max(n, 1) + rng.normal(0, 0.1)
        z = rng.uniform(1.25, 1.6)
        p = _free_spot(room, c + np.array([a * np.cos(th), b * np.sin(th)]), z)
        yaw = th + rng.uniform(-0.8, 0.8)
        pitch = rng.uniform(-0.55, -0.2)
        poses.append(_pose(p, z, yaw, pitch, rng.normal(0, 0.03)))
    return poses


def _free_spot(room: Room, p: np.ndarray, z: float) -> np.ndarray:
    """The point nearest ``p`` (moving towards the centre, then anywhere) with nothing tall around it."""
    blocked = room.height > z - 0.35
    c = np.array([room.W / 2, room.D / 2])

    def ok(q):
        d2 = ((room.cells - q) ** 2).sum(-1)
        return not blocked[d2 < 0.3**2].any()

    for f in (1.0, 0.75, 0.5, 0.25, 0.0):
        q = c + f * (p - c)
        if ok(q):
            return q
    free = ~blocked
    if free.any():
        cells = room.cells[free]
        return cells[np.argmin(((cells - p) ** 2).sum(-1))]
    return c



def camera_intrinsics(width: int, height: int) -> np.ndarray:
    """3x3 pinhole intrinsics with ScanNet's depth-camera field of view scaled to (width, height)."""
    f = 577.87 / 640.0 * width
    return np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1.0]])


def render_frames(
    coord: np.ndarray,
    faces: np.ndarray,
    color: np.ndarray,
    poses: list[np.ndarray],
    K: np.ndarray,
    width: int,
    height: int,
    rng: np.random.Generator | None = None,
    noise: bool = True,
    nthreads: int = 0,
    return_hits: bool = False,
) -> list[tuple[np.ndarray, np.ndarray]] | tuple[list[tuple[np.ndarray, np.ndarray]], dict]:
    """Ray-cast (colour uint8 (H,W,3), depth float32 metres (H,W)) for each camera-to-world pose.

    Colour is the barycentric blend of the hit triangle's vertex colours; depth is the distance
    along the camera z axis (0 where no surface is hit). With ``noise``: depth noise growing with
    distance, dropouts at grazing angles, and colour noise. With ``return_hits``: also a dict with
    ``prim`` (F, H, W) int64, the triangle each pixel's ray hits (-1 = none), and ``xyz`` (F, H, W, 3)
    float32, the (noise-free) world point it hits.
    """
    import open3d as o3d

    rng = rng or np.random.default_rng(0)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(
        o3d.core.Tensor(np.ascontiguousarray(coord, np.float32)),
        o3d.core.Tensor(np.ascontiguousarray(faces, np.uint32)),
    )
    u, v = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    cam_dirs = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1).astype(
        np.float32
    )
    inv_len = 1.0 / np.linalg.norm(cam_dirs, axis=-1)  # the same for every pose
    rays = np.empty((len(poses), height, width, 6), np.float32)
    for i, T in enumerate(poses):
        rays[i, ..., :3] = T[:3, 3]
        rays[i, ..., 3:] = cam_dirs @ T[:3, :3].T.astype(np.float32)  # camera z component 1: t_hit = z-depth
    hit = scene.cast_rays(o3d.core.Tensor(rays), nthreads=nthreads)
    t_hit = hit["t_hit"].numpy()
    valid = np.isfinite(t_hit)
    prim = np.where(valid, hit["primitive_ids"].numpy(), 0).astype(np.int64)
    uvw = hit["primitive_uvs"].numpy()
    face_col = color.astype(np.float32)[faces]  # (T, 3 corners, 3 channels)
    c0 = face_col[:, 0]
    d1, d2 = face_col[:, 1] - c0, face_col[:, 2] - c0
    img = c0[prim]  # barycentric blend: c0 + u (c1 - c0) + v (c2 - c0)
    img += uvw[..., 0:1] * d1[prim] + uvw[..., 1:2] * d2[prim]
    img[~valid] = 0
    depth = np.where(valid, t_hit, 0.0).astype(np.float32)
    if noise:
        nrm = hit["primitive_normals"].numpy()
        cos = np.abs(np.einsum("fhwc,fhwc->fhw", rays[..., 3:], nrm)) * inv_len
        sigma = 0.5 * (0.0012 + 0.0019 * (depth - 0.4) ** 2)
        depth = np.where(valid, depth + rng.standard_normal(depth.shape, np.float32) * sigma, 0).astype(
            np.float32
        )
        drop = (cos < 0.08) | (rng.random(depth.shape, np.float32) < 0.003)
        depth[drop] = 0
        img += rng.standard_normal(img.shape, np.float32) * 2.5
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    frames = [(img[i], depth[i]) for i in range(len(poses))]
    if not return_hits:
        return frames
    t0 = np.where(valid, t_hit, 0.0).astype(np.float32)[..., None]
    xyz = rays[..., :3] + rays[..., 3:] * t0
    return frames, {"prim": np.where(valid, prim, -1), "xyz": xyz}
