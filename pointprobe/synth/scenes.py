"""A generated scene: the furnished room assembled into one mesh, annotated, shaded and placed in the world.

Vertices are jittered (3 mm), the whole room is rotated and shifted (ScanNet meshes are not axis-aligned).
Everything is deterministic given (seed, scene index, domain).

Domains (``DOMAINS``, the ``domain=`` argument; ``pointprobe synth --domain``):

- ``rgbd`` (default): ScanNet-like RGB-D reconstructions: bedrooms, living rooms, offices, kitchens,
  bathrooms; coloured, baked shading; uniform mesh density; 3 mm vertex jitter.
- ``lidar``: a static terrestrial-LiDAR-like scan of workplaces (offices, conference rooms - a room type
  only this domain has -, kitchens): no colour (every vertex RGB 0, as LiDAR-only scans), a sensor on a
  tripod (1.4-1.8 m high, inside the room's middle half) whose range noise grows with distance
  (std ``2 mm + 1.5 mm * d^2`` along the ray) and whose point density falls off as ``(1.8 m / d)^2``
  (at least 5 %; faces are dropped at random so a vertex survives about that often). Its scenes
  are drawn from their own seed stream (``[seed, index, 1]``), so they are not the ``rgbd`` rooms of
  the same seed.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from pointprobe.data.scannet import vertex_normals
from pointprobe.synth.cameras import camera_poses
from pointprobe.synth.geometry import rot_z
from pointprobe.synth.rooms import LABEL_IDS, LIDAR_ROOM_TYPES, RAW_TO_NYU40, ROOM_TYPES, Room, build_room

DOMAINS = ("rgbd", "lidar")
DEFAULT_DOMAIN = "rgbd"
_DOMAIN_STREAM = {"lidar": 1}  # the seed stream of a non-default domain: SeedSequence([seed, index, k])


@dataclasses.dataclass
class SynthScene:
    """A generated scene in world coordinates, before it is written out."""

    name: str
    room_type: str
    coord: np.ndarray  # (N,3) float32
    color: np.ndarray  # (N,3) uint8
    faces: np.ndarray  # (F,3) int64
    seg_indices: np.ndarray  # (N,) int64 over-segment id (a vertex index) per vertex
    groups: list[dict]  # segGroups of the aggregation
    nyu40: np.ndarray  # (N,) int32 nyu40 id per vertex (0 = unannotated)
    room_to_world: np.ndarray  # 4x4
    room_size: tuple[float, float, float]
    camera_room_poses: list[np.ndarray]  # 4x4 camera-to-room poses



def _assemble(room: Room, rng: np.random.Generator):
    verts, tris, cols, obj_of_v, part_of_v = [], [], [], [], []
    off = 0
    part_id = 0
    for oi, o in enumerate(room.objs):
        for p in o.parts:
            n = len(p.verts)
            verts.append(p.verts)
            tris.append(p.tris + off)
            cols.append(np.broadcast_to(p.color, (n, 3)))
            obj_of_v.append(np.full(n, oi))
            part_of_v.append(np.full(n, part_id))
            off += n
            part_id += 1
    return (
        np.concatenate(verts),
        np.concatenate(tris),
        np.concatenate(cols).astype(np.float64),
        np.concatenate(obj_of_v),
        np.concatenate(part_of_v),
    )


def _segments(coord: np.ndarray, part_of_v: np.ndarray, size: float = 0.4) -> np.ndarray:
    """Over-segmentation: one segment per (part, 40 cm cell); its id is its smallest vertex index."""
    cell = np.floor(coord / size).astype(np.int64)
    cell -= cell.min(0)  # < 1024 cells of 40 cm per axis for any room
    key = ((part_of_v.astype(np.int64) * 1024 + cell[:, 0]) * 1024 + cell[:, 1]) * 1024 + cell[:, 2]
    _, inv = np.unique(key, return_inverse=True)
    first = np.full(inv.max() + 1, len(coord), np.int64)
    np.minimum.at(first, inv, np.arange(len(coord)))
    return first[inv]


def check_domain(domain: str) -> str:
    """``domain`` if it is one of ``DOMAINS``; ``ValueError`` otherwise."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown synth domain {domain!r} (expected one of {', '.join(DOMAINS)})")
    return domain


def _lidar_scan(room: Room, v: np.ndarray, t: np.ndarray, rng: np.random.Generator):
    """The ``lidar`` domain's sensor model in room coordinates: (kept vertex indices, faces re-indexed,
    vertices with range noise). A vertex at distance d from a tripod sensor in the room's middle half
    survives with probability about p(d) = max(0.05, min(1, (1.8 m / d)^2)): each face is kept with
    probability 1 - (1 - p)^(1/6) at its centroid's distance (a vertex lies on about 6 faces) and the
    vertices of no kept face go, so the mesh stays a mesh. Range noise: std 2 mm + 1.5 mm d^2 along the
    ray."""
    sensor = np.array([rng.uniform(0.25, 0.75) * room.W, rng.uniform(0.25, 0.75) * room.D,
                       rng.uniform(1.4, 1.8)])
    ray = v - sensor
    d = np.maximum(np.linalg.norm(ray, axis=1), 1e-6)
    d_face = np.linalg.norm(v[t].mean(1) - sensor, axis=1)
    p = np.clip((1.8 / np.maximum(d_face, 1e-6)) ** 2, 0.05, 1.0)
    faces = t[rng.random(len(t)) < 1.0 - (1.0 - p) ** (1.0 / 6.0)]
    used = np.zeros(len(v), bool)
    used[faces.ravel()] = True
    idx = np.flatnonzero(used)
    remap = np.full(len(v), -1, np.int64)
    remap[idx] = np.arange(len(idx))
    noise = rng.normal(0.0, 1.0, len(idx)) * (0.002 + 0.0015 * d[idx] ** 2)
    moved = v[idx] + ray[idx] / d[idx, None] * noise[:, None]
    return idx, remap[faces], moved


def generate_scene(seed: int, index: int, frames: int = 15, room_type: str | None = None,
                   camera_path: str = "walk", domain: str = DEFAULT_DOMAIN) -> SynthScene:
    """Generate scene ``index`` of the dataset with ``seed`` (deterministic), in world coordinates, with
    ``frames`` camera poses along ``camera_path`` (``walk``: along the walls, like a scan; ``loop``), in
    ``domain`` (``DOMAINS``: ``rgbd``, the default, or ``lidar``; see the module docstring)."""
    check_domain(domain)
    key = [int(seed), int(index)] + ([_DOMAIN_STREAM[domain]] if domain != DEFAULT_DOMAIN else [])
    seq = np.random.SeedSequence(key)
    layout_seed, noise_seed = seq.spawn(2)
    rng = np.random.default_rng(noise_seed)
    types = ROOM_TYPES if domain == DEFAULT_DOMAIN else LIDAR_ROOM_TYPES
    type_rng = np.random.default_rng(int(seed) if domain == DEFAULT_DOMAIN else [int(seed), key[2]])
    kind = room_type or types[(index + int(type_rng.integers(len(types)))) % len(types)]
    factor = 1.0
    for _ in range(4):
        room, _tw = build_room(layout_seed, kind, factor)
        n = sum(o.num_vertices() for o in room.objs)
        if n > 95_000:
            factor *= math.sqrt(n / 85_000) * 1.02
        elif n < 22_000:
            factor *= math.sqrt(n / 30_000)
        else:
            break
    v, t, c, obj_of_v, part_of_v = _assemble(room, rng)
    if domain == "lidar":
        keep, t, v = _lidar_scan(room, v, t, rng)
        c, obj_of_v, part_of_v = c[keep], obj_of_v[keep], part_of_v[keep]
    # baked shading from one light direction + a little fall-off, then colour noise
    nrm = vertex_normals(v, t)
    light = np.array([rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0.6, 1.5)])
    light /= np.linalg.norm(light)
    shade = 0.74 + 0.26 * np.clip(nrm @ light, -0.3, 1.0)
    dist = np.linalg.norm(v[:, :2] - [room.W / 2, room.D / 2], axis=1) / max(room.W, room.D)
    shade *= 1.0 - 0.12 * dist
    c = c * shade[:, None] + rng.normal(0, 5.0, c.shape)
    color = np.clip(np.round(c), 0, 255).astype(np.uint8)
    if domain == "lidar":  # geometry only: no colour channel in the scan
        color = np.zeros_like(color)
    v = v + rng.normal(0, 0.003, v.shape)  # sensor-like vertex jitter
    seg = _segments(v, part_of_v)
    # aggregation: one group per annotated object, segments = its over-segments
    groups, nyu = [], np.zeros(len(v), np.int32)
    order = np.argsort(obj_of_v, kind="stable")
    bounds = np.searchsorted(obj_of_v[order], np.arange(len(room.objs) + 1))
    gid = 0
    for oi, o in enumerate(room.objs):
        idx = order[bounds[oi] : bounds[oi + 1]]
        if len(idx) == 0:
            continue
        annotated = o.annotated and (o.label in ("wall", "floor") or rng.random() > 0.04)
        if not annotated:
            continue
        groups.append(
            {"id": gid, "objectId": gid, "segments": np.unique(seg[idx]).tolist(), "label": o.label}
        )
        nyu[idx] = RAW_TO_NYU40[o.label]
        gid += 1
    # not axis-aligned: random yaw about z and a shift that keeps coordinates mostly positive
    yaw = rng.uniform(0, 2 * np.pi)
    G = np.eye(4)
    G[:3, :3] = rot_z(yaw)
    corners = np.array([[0, 0, 0], [room.W, 0, 0], [0, room.D, 0], [room.W, room.D, 0]]) @ G[:3, :3].T
    G[:3, 3] = -corners.min(0) + [rng.uniform(0.2, 1.5), rng.uniform(0.2, 1.5), rng.uniform(-0.05, 0.05)]
    world = v @ G[:3, :3].T + G[:3, 3]
    poses = camera_poses(room, rng, frames, camera_path)
    return SynthScene(
        name=f"scene{index:04d}_00",
        room_type=kind,
        coord=world.astype(np.float32),
        color=color,
        faces=t,
        seg_indices=seg,
        groups=groups,
        nyu40=nyu,
        room_to_world=G,
        room_size=(room.W, room.D, room.H),
        camera_room_poses=poses,
    )



def vertex_label_ids(scene: SynthScene) -> tuple[np.ndarray, np.ndarray]:
    """Per vertex: the label table ``id`` of its annotated object (0 = unannotated) and the object's
    instance number ``objectId + 1`` (0 = none), as the label-filt / instance-filt maps hold them."""
    seg_label, seg_inst = {}, {}
    for g in scene.groups:
        for sg in g["segments"]:
            seg_label[sg], seg_inst[sg] = LABEL_IDS[g["label"]], g["objectId"] + 1
    segs, inv = np.unique(scene.seg_indices, return_inverse=True)
    label_id = np.array([seg_label.get(int(x), 0) for x in segs], np.int64)[inv]
    inst = np.array([seg_inst.get(int(x), 0) for x in segs], np.int64)[inv]
    return label_id, inst
