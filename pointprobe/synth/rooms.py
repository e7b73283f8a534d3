"""Rooms of the generated scenes: categories, the room layout and its furnishing.

A scene is a room of one of five types (bedroom, living room, office, kitchen, bathroom) with
walls (door and window openings), floor, doors, windows, curtains, pictures and furniture built from
primitives at random sizes, positions and orientations. Palettes are shared between classes and
colours carry noise and baked shading, so classes take geometry and context to tell apart.
"""

from __future__ import annotations

import math

import numpy as np

from pointprobe.data.scannet import CLASS_LABELS_200, VALID_CLASS_IDS_200
from pointprobe.synth import objects as so
from pointprobe.synth.geometry import Obj, box, cylinder, merge, rect, rot_z, wavy_sheet

ROOM_TYPES = ("bedroom", "living room", "office", "kitchen", "bathroom")
# room types of the ``lidar`` domain (``pointprobe.synth.scenes.DOMAINS``): workplaces, one of them only there
LIDAR_ROOM_TYPES = ("office", "conference room", "kitchen")
SCANNET_SCENE_TYPES = {
    "conference room": "Conference Room",
    "bedroom": "Bedroom / Hotel",
    "living room": "Living room / Lounge",
    "office": "Office",
    "kitchen": "Kitchen",
    "bathroom": "Bathroom",
}

# fmt: off
NYU40_NAMES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
    "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes",
    "ceiling", "books", "refridgerator", "television", "paper", "towel", "shower curtain", "box",
    "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure",
    "otherfurniture", "otherprop",
)
# Raw categories the generator uses -> nyu40 id (as in ScanNet's label table).
RAW_TO_NYU40: dict[str, int] = {
    "wall": 1, "floor": 2, "cabinet": 3, "kitchen cabinet": 3, "file cabinet": 3, "bed": 4, "chair": 5,
    "office chair": 5, "armchair": 5, "couch": 6, "table": 7, "dining table": 7, "coffee table": 7,
    "end table": 7, "door": 8, "window": 9, "bookshelf": 10, "picture": 11, "counter": 12,
    "kitchen counter": 12, "desk": 14, "curtain": 16, "pillow": 18, "mirror": 19, "book": 23,
    "refrigerator": 24, "tv": 25,
    "shower curtain": 28, "box": 29, "nightstand": 32, "toilet": 33, "sink": 34, "lamp": 35, "bathtub": 36,
    "trash can": 39, "ottoman": 39, "bench": 39, "tv stand": 39, "monitor": 40, "keyboard": 40,
}
# fmt: on
LABEL_IDS = dict(zip(CLASS_LABELS_200, VALID_CLASS_IDS_200))
assert all(k in LABEL_IDS for k in RAW_TO_NYU40), "every raw category must be a ScanNet200 class name"

WALL_GRID = 0.05  # occupancy grid cell (m)




# ------------------------------------------------------------------------------------------- layout
class Room:
    """A rectangular room [0,W]x[0,D]x[0,H] being furnished: occupancy grid and wall intervals."""

    def __init__(self, rng: np.random.Generator, kind: str, W: float, D: float, H: float, S: float):
        self.rng, self.kind, self.W, self.D, self.H, self.S = rng, kind, W, D, H, S
        self.nx, self.ny = math.ceil(W / WALL_GRID), math.ceil(D / WALL_GRID)
        gx = (np.arange(self.nx) + 0.5) * WALL_GRID
        gy = (np.arange(self.ny) + 0.5) * WALL_GRID
        self.cells = np.stack(np.meshgrid(gx, gy, indexing="ij"), -1)  # (nx, ny, 2)
        self.height = np.zeros((self.nx, self.ny))
        self.reserved = np.zeros((self.nx, self.ny), bool)
        # wall k: origin, tangent t, inward normal n (n = t rotated +90 deg), length, yaw of its frame
        self.walls = []
        for k, (o, t, L) in enumerate(
            (((0, 0), (1, 0), W), ((W, 0), (0, 1), D), ((W, D), (-1, 0), W), ((0, D), (0, -1), D))
        ):
            t = np.array(t, float)
            self.walls.append(
                dict(origin=np.array(o, float), t=t, n=np.array([-t[1], t[0]]), L=L, yaw=k * np.pi / 2)
            )
        self.wall_items: list[list[tuple[float, float, float, float]]] = [[] for _ in range(4)]
        self.openings: list[list[dict]] = [[] for _ in range(4)]
        self.objs: list[Obj] = []

    # -- occupancy
    def _rect_mask(self, offset, yaw: float, w: float, d: float, margin: float = 0.0) -> np.ndarray | None:
        R = rot_z(yaw)[:2, :2]
        corners = np.array([[-w / 2, 0], [w / 2, 0], [w / 2, d], [-w / 2, d]]) @ R.T + offset
        if (
            corners.min() < -1e-6
            or corners[:, 0].max() > self.W + 1e-6
            or corners[:, 1].max() > self.D + 1e-6
        ):
            return None
        local = (self.cells - offset) @ R  # rows of R^T applied
        return (
            (local[..., 0] >= -w / 2 - margin)
            & (local[..., 0] <= w / 2 + margin)
            & (local[..., 1] >= -margin)
            & (local[..., 1] <= d + margin)
        )

    def fits(self, offset, yaw: float, w: float, d: float, margin: float = 0.02) -> bool:
        m = self._rect_mask(np.asarray(offset, float), yaw, w, d, margin)
        return m is not None and not (self.height[m] > 0).any() and not self.reserved[m].any()

    def occupy(self, offset, yaw: float, w: float, d: float, h: float) -> None:
        m = self._rect_mask(np.asarray(offset, float), yaw, w, d)
        if m is not None:
            self.height[m] = np.maximum(self.height[m], h)

    def reserve(self, offset, yaw: float, w: float, d: float) -> None:
        m = self._rect_mask(np.asarray(offset, float), yaw, w, d)
        if m is not None:
            self.reserved |= m

    def wall_free(self, k: int, s0: float, s1: float, z0: float, z1: float) -> bool:
        return all(s1 <= a0 or s0 >= a1 or z1 <= b0 or z0 >= b1 for a0, a1, b0, b1 in self.wall_items[k])

    # -- placement
    def add(self, item: so.Item, offset, yaw: float) -> None:
        for o in item.objs:
            o.transform(yaw, (offset[0], offset[1], 0.0))
            self.objs.append(o)

    def place_on_wall(
        self, item: so.Item, walls=None, s: float | None = None, tries: int = 30, gap: float = 0.01
    ) -> tuple[int, float] | None:
        """Put an item's back against a wall; returns (wall, position along it) or None."""
        rng = self.rng
        for _ in range(tries if s is None else 1):
            k = int(rng.choice(walls if walls is not None else range(4)))
            wall = self.walls[k]
            L = wall["L"]
            if item.w > L - 0.04:
                continue
            ss = s if s is not None else rng.uniform(item.w / 2 + 0.02, L - item.w / 2 - 0.02)
            if ss - item.w / 2 < 0.0 or ss + item.w / 2 > L:
                continue
            if not self.wall_free(k, ss - item.w / 2, ss + item.w / 2, 0.0, item.h):
                continue
            offset = wall["origin"] + ss * wall["t"] + gap * wall["n"]
            if not self.fits(offset, wall["yaw"], item.w, item.d):
                continue
            self.occupy(offset, wall["yaw"], item.w, item.d, item.h)
            self.wall_items[k].append((ss - item.w / 2, ss + item.w / 2, 0.0, item.h))
            self.add(item, offset, wall["yaw"] + rng.normal(0, 0.005))
            return k, ss
        return None

    def place_free(self, item: so.Item, center, yaw: float) -> bool:
        """Put an item with its footprint centred at ``center`` (room coordinates)."""
        offset = np.asarray(center, float) - rot_z(yaw)[:2, :2] @ np.array([0.0, item.d / 2])
        if not self.fits(offset, yaw, item.w, item.d):
            return False
        self.occupy(offset, yaw, item.w, item.d, item.h)
        self.add(item, offset, yaw)
        return True

    def place_facing(self, item: so.Item, target, direction, distance: float, jitter: float = 0.15) -> bool:
        """Put an item facing ``target``, its front edge ``distance`` away from it along ``direction``."""
        direction = np.asarray(direction, float) / np.linalg.norm(direction)
        yaw = math.atan2(direction[0], -direction[1]) + self.rng.normal(0, jitter)
        # local +y (front) must point along -direction: (-sin yaw, cos yaw) = -direction
        front = np.asarray(target, float) + direction * distance
        offset = front + direction * item.d  # the item's back centre (local origin)
        if not self.fits(offset, yaw, item.w, item.d):
            return False
        self.occupy(offset, yaw, item.w, item.d, item.h)
        self.add(item, offset, yaw)
        return True

    def random_center(self, margin: float) -> np.ndarray:
        m = min(margin, self.W / 2 - 0.05, self.D / 2 - 0.05)
        return np.array([self.rng.uniform(m, self.W - m), self.rng.uniform(m, self.D - m)])


# ------------------------------------------------------------------------------------ wall features
def _door(rng, S: float, s0: float, s1: float, hd: float, tw: float) -> Obj:
    """Door in wall-local coordinates (x along the wall, +y into the room): reveals, trim, panel, handle."""
    o = Obj("door")
    c = so.pick(rng, "wood", "white", "paint", "dark")
    trim = c if rng.random() < 0.5 else so.pick(rng, "white", "wood", "paint")
    o.add(rect((s0, -tw, 0), (0, tw, 0), (0, 0, hd), S), trim)
    o.add(rect((s1, -tw, 0), (0, 0, hd), (0, tw, 0), S), trim)
    o.add(rect((s0, -tw, hd), (0, tw, 0), (s1 - s0, 0, 0), S), trim)
    f = rng.uniform(0.05, 0.08)
    o.add(
        merge(
            box((s0 - f, 0, 0), (s0, 0.015, hd + f), S, bottom=False),
            box((s1, 0, 0), (s1 + f, 0.015, hd + f), S, bottom=False),
            box((s0, 0, hd), (s1, 0.015, hd + f), S),
        ),
        trim,
    )
    w = s1 - s0 - 0.006
    if rng.random() < 0.65:  # closed, set into the opening
        y0 = -tw / 2 - 0.02
        o.add(box((s0 + 0.003, y0, 0.005), (s1 - 0.003, y0 + 0.04, hd - 0.003), S), c)
        o.add(cylinder((s1 - 0.07, y0 + 0.04, 1.0), 0.01, 0.06, S, axis=(0, 1, 0)), so.pick(rng, "metal"))
        o.add(box((s1 - 0.16, y0 + 0.09, 0.99), (s1 - 0.06, y0 + 0.1, 1.01), S), so.pick(rng, "metal"))
    else:  # open into the room, hinged at s0
        a = rng.uniform(1.0, 1.7)
        v, t = box((0, 0, 0.005), (w, 0.04, hd - 0.003), S)
        v = v @ rot_z(a).T + [s0 + 0.003, 0, 0]
        o.add((v, t), c)
    return o


def _window(rng, S: float, s0: float, s1: float, z0: float, z1: float, tw: float) -> Obj:
    """Window in wall-local coordinates: reveals, recessed pane, frame and mullions, sill."""
    o = Obj("window")
    frame = so.pick(rng, "white", "wood", "dark", "paint")
    o.add(rect((s0, -tw, z0), (0, tw, 0), (0, 0, z1 - z0), S), frame)
    o.add(rect((s1, -tw, z0), (0, 0, z1 - z0), (0, tw, 0), S), frame)
    o.add(rect((s0, -tw, z1), (0, tw, 0), (s1 - s0, 0, 0), S), frame)
    o.add(rect((s0, -tw, z0), (s1 - s0, 0, 0), (0, tw, 0), S), frame)
    pd = tw * rng.uniform(0.4, 0.75)
    o.add(rect((s0, -pd, z0), (0, 0, z1 - z0), (s1 - s0, 0, 0), S), so.pick(rng, "glass", "glass", "white"))
    fw = rng.uniform(0.04, 0.07)
    bars = [
        box((s0, -pd, z0), (s0 + fw, -pd + 0.04, z1), S),
        box((s1 - fw, -pd, z0), (s1, -pd + 0.04, z1), S),
        box((s0, -pd, z0), (s1, -pd + 0.04, z0 + fw), S),
        box((s0, -pd, z1 - fw), (s1, -pd + 0.04, z1), S),
    ]
    if s1 - s0 > 1.0 or rng.random() < 0.4:
        m = 0.5 * (s0 + s1)
        bars.append(box((m - fw / 2, -pd, z0), (m + fw / 2, -pd + 0.04, z1), S))
    if rng.random() < 0.4:
        zm = z0 + (z1 - z0) * rng.uniform(0.55, 0.75)
        bars.append(box((s0, -pd, zm - fw / 2), (s1, -pd + 0.04, zm + fw / 2), S))
    o.add(merge(*bars), frame)
    sd = rng.uniform(0.03, 0.08)
    o.add(box((s0 - 0.05, -0.02, z0 - 0.035), (s1 + 0.05, sd, z0), S), frame)
    return o


def _curtain(rng, S: float, s0: float, s1: float, z_bottom: float, z_top: float, L: float) -> Obj:
    """One or two wavy curtain panels beside a window (wall-local), on a rod."""
    o = Obj("curtain")
    c = so.pick(rng, "fabric", "white", "paint", "wood")
    y = rng.uniform(0.07, 0.12)
    pw = rng.uniform(0.3, 0.7)
    lam, amp = rng.uniform(0.12, 0.22), rng.uniform(0.025, 0.05)
    panels = [(s0 - 0.6 * pw, s0 + 0.4 * pw), (s1 - 0.4 * pw, s1 + 0.6 * pw)]
    if rng.random() < 0.3:
        panels = [panels[int(rng.integers(2))]]
    for a, b in panels:
        a, b = max(a, 0.03), min(b, L - 0.03)
        if b - a > 0.1:
            o.add(
                wavy_sheet(
                    (a, y, z_bottom),
                    (b - a, 0, 0),
                    (0, 0, z_top - z_bottom),
                    S,
                    amp,
                    lam,
                    rng.uniform(0, 6.28),
                ),
                c,
            )
    a, b = max(s0 - 0.6 * pw - 0.05, 0.02), min(s1 + 0.6 * pw + 0.05, L - 0.02)
    o.add(
        cylinder((a, y, z_top + 0.03), 0.012, b - a, S, axis=(1, 0, 0)), so.pick(rng, "metal", "wood", "dark")
    )
    return o


def _picture(rng, S: float, s0: float, s1: float, zb: float, zt: float, label: str = "picture") -> Obj:
    """A framed picture (or mirror) on the wall: a thin box with a patterned front."""
    o = Obj(label)
    th = rng.uniform(0.015, 0.04)
    frame = so.pick(rng, "wood", "dark", "white", "metal")
    o.add(box((s0, 0, zb), (s1, th, zt), S, bottom=True), frame)
    fw = rng.uniform(0.02, 0.06)
    v, t = rect((s0 + fw, th + 0.002, zb + fw), (0, 0, zt - zb - 2 * fw), (s1 - s0 - 2 * fw, 0, 0), S * 0.6)
    if label == "mirror":
        col = so.pick(rng, "glass", "metal")
        o.add((v, t), col)
        return o
    cols = [so.pick(rng, *so.PALETTES.keys()) for _ in range(3)]
    fx, fz = rng.uniform(2, 12, 2)
    ph = rng.uniform(0, 6.28, 2)
    f1 = 0.5 + 0.5 * np.sin(fx * v[:, 0] + ph[0])
    f2 = 0.5 + 0.5 * np.sin(fz * v[:, 2] + ph[1])
    rgb = (
        cols[0] * f1[:, None] * f2[:, None]
        + cols[1] * (1 - f1[:, None])
        + cols[2] * f1[:, None] * (1 - f2[:, None])
    )
    o.add((v, t), np.clip(rgb, 0, 255))
    return o


# ----------------------------------------------------------------------------------------- programs
def _with_chairs(
    room: Room, rng, S: float, center, yaw: float, table: so.Item, n_max: int, office: bool = False
):
    R = rot_z(yaw)[:2, :2]
    sides = [
        ((0, 1), table.d / 2, table.w),
        ((0, -1), table.d / 2, table.w),
        ((1, 0), table.w / 2, table.d),
        ((-1, 0), table.w / 2, table.d),
    ]
    placed = 0
    for m, half, length in sides:
        n = 2 if length > 1.3 and rng.random() < 0.6 else 1
        if rng.random() < 0.25 or placed >= n_max:
            continue
        for j in range(n):
            along = (j + 0.5) / n - 0.5
            mdir = R @ np.array(m, float)
            tdir = np.array([-mdir[1], mdir[0]])
            target = np.asarray(center) + mdir * half + tdir * along * length * 0.8
            chair = so.make_chair(rng, S, "office chair" if office else "chair")
            if room.place_facing(chair, target, mdir, rng.uniform(0.03, 0.25)):
                placed += 1


def _desk_with_chair(room: Room, rng, S: float, office: bool) -> None:
    desk = so.make_desk(rng, S)
    pos = room.place_on_wall(desk)
    if pos is None or rng.random() < 0.15:
        return
    k, s = pos
    wall = room.walls[k]
    target = wall["origin"] + s * wall["t"] + wall["n"] * (0.01 + desk.d)
    chair = so.make_chair(rng, S, "office chair" if office or rng.random() < 0.5 else "chair")
    for _ in range(5):
        shift = wall["t"] * rng.uniform(-0.3, 0.3) * desk.w
        if room.place_facing(chair, target + shift, wall["n"], rng.uniform(0.03, 0.35)):
            break


def _table_set(room: Room, rng, S: float, kind: str, n_chairs: int, office: bool = False) -> None:
    for _ in range(8):
        table = so.make_table(rng, S, kind)
        yaw = float(rng.choice([0.0, np.pi / 2])) + rng.normal(0, 0.08)
        center = room.random_center(max(table.w, table.d) / 2 + 0.5)
        offset = center - rot_z(yaw)[:2, :2] @ np.array([0.0, table.d / 2])
        if room.fits(offset, yaw, table.w, table.d, margin=0.45):
            room.place_free(table, center, yaw)
            _with_chairs(room, rng, S, center, yaw, table, n_chairs, office)
            return


def _sofa_set(room: Room, rng, S: float) -> None:
    sofa = so.make_sofa(rng, S)
    pos = room.place_on_wall(sofa, tries=60)
    if pos is None:
        return
    k, s = pos
    wall = room.walls[k]
    front = wall["origin"] + s * wall["t"] + wall["n"] * (0.01 + sofa.d)
    if rng.random() < 0.85:
        table = so.make_table(rng, S, "coffee table")
        dist = rng.uniform(0.35, 0.55)
        room.place_free(table, front + wall["n"] * (dist + table.d / 2), wall["yaw"] + rng.normal(0, 0.05))
    if rng.random() < 0.4:
        side = float(rng.choice([-1.0, 1.0]))
        et = so.make_table(rng, S, "end table")
        room.place_on_wall(et, walls=[k], s=s + side * (sofa.w / 2 + et.w / 2 + 0.05))
    if rng.random() < 0.5:  # an armchair beside the sofa group, facing across it
        arm = so.make_chair(rng, S, "armchair")
        for _ in range(6):
            side = float(rng.choice([-1.0, 1.0]))
            target = front + wall["n"] * rng.uniform(0.4, 1.0) + wall["t"] * side * (sofa.w / 2 - 0.1)
            if room.place_facing(arm, target, wall["t"] * side, rng.uniform(0.1, 0.4), jitter=0.3):
                break
    if rng.random() < 0.7:
        room.place_on_wall(
            so.make_otherfurniture(rng, S, "tv stand"), walls=[(k + 2) % 4, (k + 1) % 4, (k + 3) % 4]
        )


def _furnish(room: Room, rng, S: float) -> None:
    kind = room.kind
    if kind == "bedroom":
        bed = so.make_bed(rng, S)
        pos = room.place_on_wall(bed, tries=60)
        if pos is not None:
            k, s = pos
            for side in (-1, 1):
                if rng.random() < 0.6:
                    ns = so.make_nightstand(rng, S)
                    room.place_on_wall(ns, walls=[k], s=s + side * (bed.w / 2 + ns.w / 2 + 0.04))
            if rng.random() < 0.3:
                wall = room.walls[k]
                foot = wall["origin"] + s * wall["t"] + wall["n"] * (bed.d + 0.05)
                bench = so.make_otherfurniture(rng, S, str(rng.choice(["bench", "ottoman"])))
                room.place_free(bench, foot + wall["n"] * (bench.d / 2 + 0.05), wall["yaw"])
        if rng.random() < 0.8:
            room.place_on_wall(so.make_cabinet(rng, S))
        if rng.random() < 0.6:
            _desk_with_chair(room, rng, S, office=False)
        if rng.random() < 0.4:
            room.place_on_wall(so.make_bookshelf(rng, S))
        if rng.random() < 0.3:
            room.place_on_wall(so.make_chair(rng, S, str(rng.choice(["chair", "armchair"]))))
        if rng.random() < 0.15:
            room.place_on_wall(so.make_sofa(rng, S))
    elif kind == "living room":
        if rng.random() < 0.95:
            _sofa_set(room, rng, S)
        if rng.random() < 0.6:
            room.place_on_wall(so.make_bookshelf(rng, S))
        if rng.random() < 0.5:
            room.place_on_wall(so.make_cabinet(rng, S))
        if rng.random() < 0.35:
            _table_set(room, rng, S, "dining table", 4)
        if rng.random() < 0.35:
            room.place_on_wall(so.make_otherfurniture(rng, S, "ottoman"))
        if rng.random() < 0.25:
            _desk_with_chair(room, rng, S, office=False)
    elif kind == "office":
        for _ in range(int(rng.integers(1, 4))):
            _desk_with_chair(room, rng, S, office=True)
        for _ in range(int(rng.integers(0, 3))):
            room.place_on_wall(so.make_bookshelf(rng, S))
        if rng.random() < 0.8:
            room.place_on_wall(so.make_cabinet(rng, S, str(rng.choice(["cabinet", "file cabinet"]))))
        if rng.random() < 0.5:
            _table_set(room, rng, S, "table", 6, office=bool(rng.random() < 0.5))
        if rng.random() < 0.2:
            room.place_on_wall(so.make_sofa(rng, S))
    elif kind == "kitchen":  # the counter run is placed before the windows
        if rng.random() < 0.8:
            _table_set(room, rng, S, str(rng.choice(["table", "dining table"])), 4)
        if rng.random() < 0.4:
            room.place_on_wall(so.make_cabinet(rng, S))
    elif kind == "conference room":  # a long meeting table ringed by office chairs, storage along the walls
        _table_set(room, rng, S, "table", 8, office=True)
        for _ in range(int(rng.integers(1, 3))):
            room.place_on_wall(so.make_cabinet(rng, S, str(rng.choice(["cabinet", "file cabinet"]))))
        if rng.random() < 0.5:
            room.place_on_wall(so.make_otherfurniture(rng, S, "tv stand"))
        if rng.random() < 0.4:
            room.place_on_wall(so.make_bookshelf(rng, S))
    elif kind == "bathroom":
        tub = so.make_bathtub(rng, S) if rng.random() < 0.8 else None
        if tub is not None:
            k = int(rng.integers(4))
            L = room.walls[k]["L"]
            s = tub.w / 2 + 0.02 if rng.random() < 0.5 else L - tub.w / 2 - 0.02
            if room.place_on_wall(tub, walls=[k], s=s) is None:
                room.place_on_wall(tub)
        room.place_on_wall(so.make_toilet(rng, S), tries=60)
        if rng.random() < 0.5:
            vanity = so.make_counter_run(rng, S, rng.uniform(0.6, 1.2), sink=True, upper=False, bathroom=True)
            pos = room.place_on_wall(vanity, tries=60)
        else:
            vanity = so.make_sink(rng, S)
            pos = room.place_on_wall(vanity, tries=60)
        if pos is not None and rng.random() < 0.7:
            k, s = pos
            mw = min(vanity.w, rng.uniform(0.5, 0.9))
            zb = vanity.h + 0.2 if vanity.h < 1.0 else 1.15
            if room.wall_free(k, s - mw / 2, s + mw / 2, zb, zb + 0.7):
                o = _picture(rng, S, s - mw / 2, s + mw / 2, zb, zb + 0.7, "mirror")
                _to_room(room, k, o)
                room.wall_items[k].append((s - mw / 2, s + mw / 2, zb, zb + 0.7))
        if rng.random() < 0.4:
            room.place_on_wall(so.make_cabinet(rng, S, "cabinet", d=rng.uniform(0.3, 0.4)))
    # shared extras
    extras = [
        (0.35, lambda: so.make_otherfurniture(rng, S, "trash can")),
        (0.3, lambda: so.make_lamp(rng, S)),
        (0.3, lambda: so.make_box(rng, S)),
        (0.25, lambda: so.make_otherfurniture(rng, S)),
        (0.2, lambda: so.make_bookshelf(rng, S)),
        (0.2, lambda: so.make_cabinet(rng, S)),
        (0.2, lambda: so.make_chair(rng, S)),
    ]
    for p, make in extras:
        if kind == "bathroom" and p < 0.3:
            continue
        if rng.random() < p:
            room.place_on_wall(make())


def _kitchen_run(room: Room, rng, S: float) -> None:
    for attempt in range(2):
        upper = attempt == 0 and rng.random() < 0.7
        k = int(rng.integers(4))
        L = room.walls[k]["L"]
        length = min(L - 0.1, rng.uniform(1.6, 3.4))
        run = so.make_counter_run(rng, S, length, sink=True, upper=upper)
        pos = room.place_on_wall(run, walls=[k], tries=10) or room.place_on_wall(run, tries=30)
        if pos is not None:
            break
    else:
        return
    k, s = pos
    fridge = so.make_refrigerator(rng, S)
    if rng.random() < 0.9:
        for side in (1, -1):
            if room.place_on_wall(fridge, walls=[k], s=s + side * (length / 2 + fridge.w / 2 + 0.03)):
                break
        else:
            room.place_on_wall(fridge)
    if rng.random() < 0.4:  # second run on an adjacent wall
        k2 = (k + int(rng.choice([1, 3]))) % 4
        L2 = room.walls[k2]["L"]
        run2 = so.make_counter_run(
            rng, S, min(L2 - 0.8, rng.uniform(1.0, 2.2)), sink=False, upper=bool(rng.random() < 0.5)
        )
        if run2.w > 0.5:
            room.place_on_wall(run2, walls=[k2])


def _to_room(room: Room, k: int, o: Obj) -> None:
    wall = room.walls[k]
    o.transform(wall["yaw"], (wall["origin"][0], wall["origin"][1], 0.0))
    room.objs.append(o)


def _doors(room: Room, rng, S: float, tw: float) -> None:
    """Door openings (wall holes + door objects); the floor in front of each door is kept free."""
    n_doors = 1 + int(rng.random() < (0.1 if room.kind == "bathroom" else 0.3))
    for _ in range(n_doors):
        for _ in range(20):
            k = int(rng.integers(4))
            L = room.walls[k]["L"]
            w = rng.uniform(0.75, 0.95)
            if L < w + 0.3:
                continue
            s0 = rng.uniform(0.1, L - w - 0.1)
            hd = rng.uniform(2.0, min(2.15, room.H - 0.15))
            if not room.wall_free(k, s0 - 0.2, s0 + w + 0.2, 0, room.H):
                continue
            room.openings[k].append(dict(s0=s0, s1=s0 + w, z0=0.0, z1=hd))
            room.wall_items[k].append((s0 - 0.1, s0 + w + 0.1, 0.0, hd + 0.1))
            wall = room.walls[k]
            room.reserve(wall["origin"] + (s0 + w / 2) * wall["t"], wall["yaw"], w + 0.2, 1.0)
            _to_room(room, k, _door(rng, S, s0, s0 + w, hd, tw))
            break


def _windows(room: Room, rng, S: float, tw: float) -> None:
    """Window openings above whatever stands on the wall already, some with curtains."""
    bath = room.kind == "bathroom"
    n_win = int(rng.integers(0, 2)) if bath else int(rng.integers(1, 4))
    for _ in range(n_win):
        for _ in range(20):
            k = int(rng.integers(4))
            L = room.walls[k]["L"]
            w = rng.uniform(0.5, 0.8) if bath else rng.uniform(0.8, 1.8)
            if L < w + 0.5:
                continue
            s0 = rng.uniform(0.25, L - w - 0.25)
            z0 = rng.uniform(1.2, 1.4) if bath else rng.uniform(0.75, 1.05)
            z1 = min(room.H - 0.2, z0 + (rng.uniform(0.6, 1.0) if bath else rng.uniform(1.0, 1.5)))
            if not room.wall_free(k, s0 - 0.3, s0 + w + 0.3, z0 - 0.1, room.H):
                continue
            room.openings[k].append(dict(s0=s0, s1=s0 + w, z0=z0, z1=z1))
            _to_room(room, k, _window(rng, S, s0, s0 + w, z0, z1, tw))
            item_z = (z0 - 0.06, z1 + 0.06)
            if rng.random() < (0.2 if bath else 0.65):
                pw = 0.75  # widest curtain panel reach beyond the window edge
                long = rng.random() < 0.6 and room.wall_free(k, s0 - pw, s0 + w + pw, 0.0, z0)
                wall = room.walls[k]
                if long and not room.fits(
                    wall["origin"] + (s0 + w / 2) * wall["t"], wall["yaw"], w + 1.2, 0.16, margin=0.0
                ):
                    long = False
                zb = rng.uniform(0.02, 0.08) if long else z0 - rng.uniform(0.05, 0.15)
                zt = min(room.H - 0.06, z1 + rng.uniform(0.08, 0.2))
                _to_room(room, k, _curtain(rng, S, s0, s0 + w, zb, zt, L))
                item_z = (0.0 if long else zb, room.H)
                if long:
                    room.occupy(wall["origin"] + (s0 + w / 2) * wall["t"], wall["yaw"], w + 1.2, 0.16, zt)
            room.wall_items[k].append((s0 - 0.06, s0 + w + 0.06, *item_z))
            break


def _pictures(room: Room, rng, S: float) -> None:
    n = int(rng.integers(0, 2)) if room.kind == "bathroom" else int(rng.integers(1, 5))
    for _ in range(n):
        for _ in range(20):
            k = int(rng.integers(4))
            L = room.walls[k]["L"]
            w = rng.uniform(0.3, 1.1)
            h = rng.uniform(0.3, min(0.9, w * 1.4))
            zb = rng.uniform(1.1, min(1.9, room.H - h - 0.15))
            if L < w + 0.2:
                continue
            s0 = rng.uniform(0.1, L - w - 0.1)
            if room.wall_free(k, s0 - 0.05, s0 + w + 0.05, zb - 0.05, zb + h + 0.05):
                room.wall_items[k].append((s0, s0 + w, zb, zb + h))
                _to_room(room, k, _picture(rng, S, s0, s0 + w, zb, zb + h))
                break


def _shell(room: Room, rng, S_shell: float, tw: float) -> None:
    """Walls (with holes at the openings) and the floor (planks, tiles or carpet pattern)."""
    wall_c = so.pick(rng, "paint", "paint", "white", "tile" if room.kind == "bathroom" else "paint")
    for k, wall in enumerate(room.walls):
        holes = [(op["z0"], op["z1"], op["s0"], op["s1"]) for op in room.openings[k]]
        o = Obj("wall")
        c = wall_c if rng.random() < 0.85 else so.pick(rng, "paint", "white")
        o.add(rect((0, 0, 0), (0, 0, room.H), (wall["L"], 0, 0), S_shell, holes=holes), c)
        _to_room(room, k, o)
    floor = Obj("floor")
    v, t = rect((0, 0, 0), (room.W, 0, 0), (0, room.D, 0), S_shell)
    style = rng.choice(["wood", "tile", "carpet"]) if room.kind not in ("bathroom", "kitchen") else "tile"
    if style == "wood":
        base = so.pick(rng, "wood")
        axis = int(rng.integers(2))
        plank = rng.uniform(0.1, 0.2)
        idx = np.floor(v[:, axis] / plank).astype(int)
        f = 1.0 + 0.07 * np.sin(idx * 12.9898 + rng.uniform(0, 6.28)) * np.cos(idx * 4.1414)
        rgb = base * f[:, None]
    elif style == "tile":
        base = so.pick(rng, "tile", "white", "dark")
        size = rng.uniform(0.3, 0.6)
        ij = np.floor(v[:, :2] / size).astype(int)
        f = 1.0 + 0.05 * ((ij[:, 0] + ij[:, 1]) % 2 * 2 - 1) * float(rng.random() < 0.5)
        rgb = base * f[:, None]
    else:
        rgb = np.broadcast_to(so.pick(rng, "fabric", "dark", "paint"), v.shape)
    floor.add((v, t), np.clip(rgb, 0, 255))
    room.objs.insert(0, floor)


def build_room(rng_seed, kind: str, factor: float) -> tuple[Room, float]:
    rng = np.random.default_rng(rng_seed)
    size = {
        "bedroom": ((3.2, 5.0), (3.0, 4.5)),
        "living room": ((4.0, 7.0), (3.5, 6.0)),
        "office": ((4.0, 7.0), (3.5, 6.0)),
        "conference room": ((5.0, 8.0), (4.0, 6.5)),
        "kitchen": ((3.2, 5.5), (3.0, 4.5)),
        "bathroom": ((2.2, 3.2), (1.8, 3.0)),
    }[kind]
    W, D = rng.uniform(*size[0]), rng.uniform(*size[1])
    H = rng.uniform(2.4, 3.0)
    area = W * D + 2 * (W + D) * H
    S_shell = float(np.clip(math.sqrt(area / 32000.0), 0.03, 0.06)) * factor
    S = 0.04 * factor
    room = Room(rng, kind, W, D, H, S)
    tw = rng.uniform(0.1, 0.2)
    _doors(room, rng, S, tw)
    if kind == "kitchen":
        _kitchen_run(room, rng, S)
    _windows(room, rng, S, tw)
    _furnish(room, rng, S)
    _pictures(room, rng, S)
    _shell(room, rng, S_shell, tw)
    return room, tw
