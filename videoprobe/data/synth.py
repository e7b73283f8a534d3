"""A generated action-recognition dataset that separates appearance from motion.

Two kinds of classes (see ``CATALOGUE``):

* **appearance** classes are defined by *what is shown*: a shape with a texture and a colour range
  (e.g. a red solid disc, a blue checkered square). The object moves with a random motion drawn
  from the same generator the motion classes use, so motion says nothing about the class.
* **motion** classes are defined by *how the object moves*: direction of translation (left / right /
  up / down), sense of rotation (clockwise / counter-clockwise), speed (one slow round trip vs. three
  fast round trips along a segment of the same length), or gravity-like acceleration played forward vs
  reversed (falling from rest vs rising and slowing to rest). The object is a random irregular
  polygon with random colour, texture and size: every motion class draws its appearance from exactly
  the same distribution.

Motion classes come in time-reversal pairs (left/right, up/down, cw/ccw, falling/rising): the two
members of a pair have exactly the same distribution of *sets* of frames, and differ only in the
order of the frames. A frame-wise image encoder whose features are pooled over time cannot tell the
members of a pair apart (it is at chance within a pair); a video encoder with temporal modelling can.
The slow/fast pair is matched in the marginal distribution of positions (uniform over the segment).

Every video has clutter: a smooth random colour background with static distractor blobs (shared by
the videos of one group, like UCF101's groups), two small distractor dots on random walks and
per-frame pixel noise.  Everything is deterministic given the seed (numpy ``default_rng`` seeded per
class / group / clip; libx264 runs single-threaded).

Layout written by ``generate_dataset`` (UCF101 style, read by ``build_video_dataset("ucf101", out)``)::

    out/videos/<Class>/v_<Class>_gXX_cYY.mp4
    out/splits/classInd.txt          "1 ClassA" ...  (classes sorted by name)
    out/splits/trainlist01.txt       "ClassA/v_ClassA_g03_c01.mp4 1"
    out/splits/testlist01.txt        "ClassA/v_ClassA_g01_c01.mp4"
    out/classes.json                 per class: index, kind ("appearance" | "motion"), description
"""
from __future__ import annotations

import json
import math
import os
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import ConfigError

# --------------------------------------------------------------------------------------------------
# catalogue


@dataclass(frozen=True)
class AppearanceClass:
    """An object look: ``shape`` from SHAPES, ``texture`` in solid/stripes/checker, hue in [0, 1)."""

    shape: str
    texture: str
    hue: float
    description: str


@dataclass(frozen=True)
class MotionClass:
    """A motion: ``kind`` in MOTION_KINDS with its parameter (direction angle, sign, ...)."""

    kind: str
    param: float
    description: str


MOTION_KINDS = ("translate", "rotate", "fall", "rise", "sweep")
TEXTURES = ("solid", "stripes", "checker")

CATALOGUE: dict[str, AppearanceClass | MotionClass] = {
    # appearance classes: what is shown
    "RedDisc": AppearanceClass("disc", "solid", 0.00, "red solid disc, random motion"),
    "BlueSquare": AppearanceClass("square", "checker", 0.62, "blue checkered square, random motion"),
    "GreenTriangle": AppearanceClass("triangle", "stripes", 0.33, "green striped triangle, random motion"),
    "YellowRing": AppearanceClass("ring", "solid", 0.15, "yellow ring, random motion"),
    "PurpleStar": AppearanceClass("star", "stripes", 0.80, "purple striped star, random motion"),
    "OrangeCross": AppearanceClass("cross", "solid", 0.08, "orange cross, random motion"),
    "CyanHexagon": AppearanceClass("hexagon", "checker", 0.50, "cyan checkered hexagon, random motion"),
    # motion classes: how it moves (image y axis points down)
    "MoveLeft": MotionClass("translate", math.pi, "moves left at constant speed, random look"),
    "MoveRight": MotionClass("translate", 0.0, "moves right at constant speed, random look"),
    "MoveUp": MotionClass("translate", -math.pi / 2, "moves up at constant speed, random look"),
    "MoveDown": MotionClass("translate", math.pi / 2, "moves down at constant speed, random look"),
    "RotateClockwise": MotionClass("rotate", 1.0, "rotates clockwise in place, random look"),
    "RotateCounterclockwise": MotionClass("rotate", -1.0, "rotates counter-clockwise in place, random look"),
    "Falling": MotionClass("fall", 1.0, "falls from rest, accelerating downwards, random look"),
    "Rising": MotionClass("rise", 1.0, "rises and slows to rest (falling played in reverse), random look"),
    "SlowSweep": MotionClass("sweep", 1.0, "one slow round trip along a random axis, random look"),
    "FastSweep": MotionClass("sweep", 3.0, "three fast round trips along a random axis, random look"),
}
APPEARANCE_CLASSES = [n for n, c in CATALOGUE.items() if isinstance(c, AppearanceClass)]
MOTION_CLASSES = [n for n, c in CATALOGUE.items() if isinstance(c, MotionClass)]
DEFAULT_CLASSES = ["RedDisc", "BlueSquare", "GreenTriangle", "YellowRing", "PurpleStar",
                   "MoveLeft", "MoveRight", "RotateClockwise", "RotateCounterclockwise", "Falling", "Rising"]


def class_kind(name: str) -> str:
    """"appearance" or "motion" for a catalogue class name."""
    return "appearance" if isinstance(CATALOGUE[name], AppearanceClass) else "motion"


# --------------------------------------------------------------------------------------------------
# shapes: star-shaped polygons given by vertex (angle, radius) in the object frame, unit size


def _regular(n: int, phase: float = 0.0, radii: list[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    ang = phase + 2 * math.pi * np.arange(n) / n
    rad = np.ones(n) if radii is None else np.asarray(radii * (n // len(radii)), dtype=np.float64)
    return ang, rad


def _cross(a: float = 0.36) -> tuple[np.ndarray, np.ndarray]:
    pts = np.array([(1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a), (-a, -1),
                    (a, -1), (a, -a), (1, -a)], dtype=np.float64) * 0.95
    return np.arctan2(pts[:, 1], pts[:, 0]), np.hypot(pts[:, 0], pts[:, 1])


SHAPES: dict[str, tuple[np.ndarray, np.ndarray]] = {
    "disc": _regular(48),
    "ring": _regular(48),
    "square": _regular(4, math.pi / 4),
    "triangle": _regular(3, -math.pi / 2),
    "hexagon": _regular(6),
    "star": _regular(10, -math.pi / 2, [1.0, 0.45]),
    "cross": _cross(),
}


def random_polygon(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An irregular star-shaped polygon (5-8 vertices, radii 0.5-1): never symmetric in practice."""
    n = int(rng.integers(5, 9))
    ang = np.sort((2 * math.pi * (np.arange(n) + rng.uniform(-0.3, 0.3, n)) / n) % (2 * math.pi))
    return ang, rng.uniform(0.5, 1.0, n)


def _boundary_radius(phi: np.ndarray, ang: np.ndarray, rad: np.ndarray) -> np.ndarray:
    """Distance from the centre to the polygon edge along direction ``phi`` (unit-size polygon)."""
    order = np.argsort(ang % (2 * math.pi))
    a = ang[order] % (2 * math.pi)
    r = rad[order]
    px, py = r * np.cos(a), r * np.sin(a)
    k = (np.searchsorted(a, phi % (2 * math.pi), side="right") - 1) % len(a)
    k2 = (k + 1) % len(a)
    dx, dy = px[k2] - px[k], py[k2] - py[k]
    num = px[k] * py[k2] - py[k] * px[k2]
    den = np.cos(phi) * dy - np.sin(phi) * dx
    return num / np.where(np.abs(den) < 1e-9, 1e-9, den)


# --------------------------------------------------------------------------------------------------
# rendering


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, dtype=np.float32) * 255.0


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a (g, g, C) grid to (size, size, C)."""
    g = grid.shape[0]
    x = np.linspace(0, g - 1, size)
    rows = np.stack([np.stack([np.interp(x, np.arange(g), grid[i, :, c]) for c in range(grid.shape[2])], -1)
                     for i in range(g)])  # (g, size, C)
    return np.stack([np.stack([np.interp(x, np.arange(g), rows[:, j, c]) for c in range(grid.shape[2])], -1)
                     for j in range(size)], 1)


def render_background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Static clutter (size, size, 3) float32: smooth colour field, finer texture, distractor blobs."""
    bg = _upsample(rng.uniform(50, 190, (4, 4, 3)), size) + _upsample(rng.uniform(-25, 25, (12, 12, 3)), size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for _ in range(int(rng.integers(3, 6))):
        r = rng.uniform(0.03, 0.07) * size
        cx, cy = rng.uniform(0, size, 2)
        col = rng.uniform(30, 230, 3)
        if rng.random() < 0.5:
            alpha = np.clip(r - np.hypot(xx - cx, yy - cy) + 0.5, 0, 1)
        else:
            alpha = np.clip(r - np.maximum(np.abs(xx - cx), np.abs(yy - cy)) + 0.5, 0, 1)
        bg = bg * (1 - alpha[..., None]) + col * alpha[..., None]
    return bg.astype(np.float32)


@dataclass
class ObjectLook:
    """The object's appearance: polygon (angles, radii), ``ring`` hole, texture, two colours, radius px."""

    angles: np.ndarray
    radii: np.ndarray
    ring: bool
    texture: str
    color: np.ndarray
    color2: np.ndarray
    radius: float


def sample_look(cls: AppearanceClass | None, size: int, rng: np.random.Generator) -> ObjectLook:
    """The class's look with jitter (appearance class) or a random polygon look (``cls=None``)."""
    radius = rng.uniform(0.15, 0.21) * size
    if cls is None:
        ang, rad = random_polygon(rng)
        color = _hsv(rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.6, 1.0))
        texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
        ring = False
    else:
        ang, rad = SHAPES[cls.shape]
        hue = (cls.hue + rng.uniform(-0.03, 0.03)) % 1.0
        color = _hsv(hue, rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0))
        texture, ring = cls.texture, cls.shape == "ring"
    return ObjectLook(ang, rad, ring, texture, color, color * 0.45, radius)


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """uniform(lo, hi); the midpoint when the range is empty (tiny frames), drawing all the same."""
    u = rng.random()
    return lo + u * (hi - lo) if hi > lo else (lo + hi) / 2


def motion_path(motion: MotionClass, frames: int, size: int, radius: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre x, centre y and rotation angle per frame (each (T,)), inside the frame.

    Positive rotation is clockwise on screen (the image y axis points down)."""
    tau = np.linspace(0.0, 1.0, frames)
    theta0 = rng.uniform(0, 2 * math.pi)
    lo, hi = radius + 1.0, size - radius - 1.0
    theta = np.full(frames, theta0)
    if motion.kind in ("translate", "sweep"):
        psi = motion.param if motion.kind == "translate" else rng.uniform(0, 2 * math.pi)
        length = rng.uniform(0.35, 0.48) * size
        if motion.kind == "sweep":  # ``param`` round trips: out and back along the segment
            phase = (2.0 * motion.param * tau) % 2.0
            q = np.where(phase <= 1.0, phase, 2.0 - phase)
        else:
            q = tau
        dx, dy = length * math.cos(psi), length * math.sin(psi)
        cx = _uniform(rng, lo + abs(dx) / 2, hi - abs(dx) / 2)
        cy = _uniform(rng, lo + abs(dy) / 2, hi - abs(dy) / 2)
        return cx + (q - 0.5) * dx, cy + (q - 0.5) * dy, theta
    if motion.kind == "rotate":
        sweep = rng.uniform(0.8, 1.3) * math.pi
        cx, cy = _uniform(rng, lo, hi), _uniform(rng, lo, hi)
        return np.full(frames, cx), np.full(frames, cy), theta0 + motion.param * sweep * tau
    if motion.kind in ("fall", "rise"):
        drop = rng.uniform(0.40, 0.55) * size
        top = _uniform(rng, lo, hi - drop)
        cx = _uniform(rng, lo, hi)
        s = tau ** 2 if motion.kind == "fall" else (1.0 - tau) ** 2
        return np.full(frames, cx), top + drop * s, theta
    raise ValueError(f"unknown motion kind {motion.kind!r}")


def random_motion(rng: np.random.Generator) -> MotionClass:
    """A motion for an appearance-class video, from the same generators as the motion classes."""
    kind = MOTION_KINDS[int(rng.integers(len(MOTION_KINDS)))]
    if kind == "translate":
        return MotionClass(kind, rng.uniform(0, 2 * math.pi), "")
    if kind == "rotate":
        return MotionClass(kind, float(rng.choice([-1.0, 1.0])), "")
    if kind == "sweep":
        return MotionClass(kind, float(rng.choice([1.0, 3.0])), "")
    return MotionClass(kind, 1.0, "")


def _object_alpha_color(look: ObjectLook, ox: np.ndarray, oy: np.ndarray,
                        theta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coverage alpha, 1 px outline alpha and colour of the object at pixel offsets (ox, oy)."""
    c, sn = math.cos(theta), math.sin(theta)
    u = (c * ox + sn * oy) / look.radius  # object frame (rotation by -theta), unit radius
    v = (-sn * ox + c * oy) / look.radius
    rho = np.hypot(u, v)
    edge = _boundary_radius(np.arctan2(v, u), look.angles, look.radii)
    alpha = np.clip((edge - rho) * look.radius + 0.5, 0.0, 1.0)
    outline = np.clip((edge - rho) * look.radius + 1.5, 0.0, 1.0)
    if look.ring:
        alpha *= np.clip((rho - 0.55) * look.radius + 0.5, 0.0, 1.0)
        outline *= np.clip((rho - 0.55) * look.radius + 1.5, 0.0, 1.0)
    if look.texture == "stripes":
        sel = np.floor(u / 0.4) % 2 == 0
    elif look.texture == "checker":
        sel = (np.floor(u / 0.5) + np.floor(v / 0.5)) % 2 == 0
    else:
        sel = np.ones(u.shape, dtype=bool)
    return alpha, outline, np.where(sel[..., None], look.color, look.color2)


def _window(cx: float, cy: float, reach: float, size: int) -> tuple[int, int, int, int]:
    return (max(int(cy - reach), 0), min(int(cy + reach) + 2, size),
            max(int(cx - reach), 0), min(int(cx + reach) + 2, size))


def render_object(frames: np.ndarray, look: ObjectLook, cx: np.ndarray, cy: np.ndarray,
                  theta: np.ndarray) -> np.ndarray:
    """Alpha-composite the object (with a dark 1 px outline) onto float frames (T, S, S, 3), in place."""
    size = frames.shape[1]
    reach = look.radius * float(look.radii.max()) + 3.0
    dark = look.color * 0.2
    for t in range(frames.shape[0]):
        y0, y1, x0, x1 = _window(cx[t], cy[t], reach, size)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        alpha, outline, color = _object_alpha_color(look, xx - cx[t], yy - cy[t], float(theta[t]))
        win = frames[t, y0:y1, x0:x1]
        win *= 1.0 - outline[..., None]
        win += outline[..., None] * dark
        win *= 1.0 - alpha[..., None]
        win += alpha[..., None] * color
    return frames


def _dot(frames: np.ndarray, path: np.ndarray, radius: float, color: np.ndarray) -> None:
    size = frames.shape[1]
    for t in range(frames.shape[0]):
        y0, y1, x0, x1 = _window(path[t, 0], path[t, 1], radius + 1, size)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        alpha = np.clip(radius - np.hypot(xx - path[t, 0], yy - path[t, 1]) + 0.5, 0, 1)[..., None]
        win = frames[t, y0:y1, x0:x1]
        win *= 1.0 - alpha
        win += alpha * color


def render_video(name: str, frames: int, size: int, rng: np.random.Generator,
                 background: np.ndarray | None = None) -> np.ndarray:
    """Render one video of catalogue class ``name`` -> uint8 (T, size, size, 3)."""
    cls = CATALOGUE[name]
    bg = render_background(size, rng) if background is None else background
    out = np.broadcast_to(bg, (frames, size, size, 3)).copy()
    for _ in range(2):  # two small distractor dots on random walks
        r = 0.035 * size
        steps = rng.normal(0, 0.03 * size, (frames, 2))
        path = np.clip(rng.uniform(r, size - r, 2) + np.cumsum(steps, 0), r, size - r)
        _dot(out, path, r, rng.uniform(30, 230, 3).astype(np.float32))
    if isinstance(cls, AppearanceClass):
        look, motion = sample_look(cls, size, rng), random_motion(rng)
    else:
        look, motion = sample_look(None, size, rng), cls
    cx, cy, theta = motion_path(motion, frames, size, look.radius, rng)
    render_object(out, look, cx, cy, theta)
    out += rng.standard_normal(out.shape, dtype=np.float32) * 5.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# writing


_RGB_TO_YUV = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]],
                       dtype=np.float32) / 255.0


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) RGB -> planar yuv420p (..., H * 3 // 2, W) in PyAV's layout: BT.601
    limited range, chroma averaged over 2x2 blocks.  Done here rather than by PyAV inside ``encode``
    to keep the bytes written fully under our control."""
    *lead, h, w, _ = rgb.shape
    x = rgb.astype(np.float32)
    y = x @ _RGB_TO_YUV[0] + 16.0
    q = (x[..., 0::2, 0::2, :] + x[..., 1::2, 0::2, :] + x[..., 0::2, 1::2, :] + x[..., 1::2, 1::2, :]) * 0.25
    uv = q @ _RGB_TO_YUV[1:].T + 128.0
    planes = [y.reshape(*lead, -1), uv[..., 0].reshape(*lead, -1), uv[..., 1].reshape(*lead, -1)]
    flat = np.concatenate(planes, axis=-1)
    return np.clip(np.rint(flat), 0, 255).astype(np.uint8).reshape(*lead, h * 3 // 2, w)


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 10, crf: int = 18,
                faststart: bool = False, gop: int | None = None) -> None:
    """Write uint8 frames (T, H, W, 3) (even H, W) as an H.264 (libx264, yuv420p) mp4, single-threaded.

    ``faststart`` puts the index (moov atom) before the data, as streaming files do; ``gop`` sets the
    keyframe interval (libx264's default otherwise)."""
    import av

    t, h, w, _ = frames.shape
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opts = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=opts) as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        # single-threaded, and no macroblock tree: with mbtree (and B-frames) this libx264 build wrote
        # different bytes for the same frames from run to run (an uninitialised read, it seems)
        stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1", "x264-params": "no-mbtree=1"}
        if gop is not None:
            stream.options = {**stream.options, "g": str(gop), "keyint_min": str(gop)}
        for i, yuv in enumerate(rgb_to_yuv420p(frames)):
            image = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            image.pts = i
            container.mux(stream.encode(image))
        container.mux(stream.encode())


# --------------------------------------------------------------------------------------------------
# dataset


@dataclass
class SynthConfig:
    """Parameters of ``generate_dataset``."""

    classes: list[str] = field(default_factory=lambda: list(DEFAULT_CLASSES))
    videos_per_class: int = 20
    seed: int = 0
    frames: int = 32
    size: int = 64
    fps: int = 10
    clips_per_group: int = 4
    test_fraction: float = 0.3

    def validate(self) -> None:
        unknown = [c for c in self.classes if c not in CATALOGUE]
        if unknown:
            raise ConfigError(f"synth: unknown class(es) {', '.join(unknown)}; known: {', '.join(CATALOGUE)}")
        if len(set(self.classes)) != len(self.classes) or len(self.classes) < 2:
            raise ConfigError("synth: classes must be at least 2 distinct names")
        if self.videos_per_class < 2:
            raise ConfigError("synth: videos_per_class must be >= 2 (one train group and one test group)")
        if self.size < 16 or self.size % 2:
            raise ConfigError("synth: size must be an even number >= 16")
        if self.frames < 2 or self.fps < 1:
            raise ConfigError("synth: frames must be >= 2 and fps >= 1")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError("synth: test_fraction must be in (0, 1)")


def _stable(name: str) -> int:
    return zlib.crc32(name.encode())


def video_plan(cfg: SynthConfig) -> list[dict[str, Any]]:
    """Every video to generate: class, group, clip, relative path, split ("train" | "test")."""
    plan = []
    n = cfg.videos_per_class
    k = max(1, min(cfg.clips_per_group, n // 2))
    n_groups = math.ceil(n / k)
    n_test = min(n_groups - 1, max(1, round(n_groups * cfg.test_fraction)))
    for name in sorted(cfg.classes):
        for i in range(n):
            g, c = i // k + 1, i % k + 1
            rel = f"{name}/v_{name}_g{g:02d}_c{c:02d}.mp4"
            plan.append({"class": name, "group": g, "clip": c, "path": rel,
                         "split": "test" if g <= n_test else "train"})
    return plan


def generate_dataset(out: str | os.PathLike, cfg: SynthConfig | None = None, progress: bool = True) -> Path:
    """Write the dataset described by ``cfg`` under ``out`` (layout in the module docstring)."""
    from common.progress import progress as progress_bar

    cfg = cfg or SynthConfig()
    cfg.validate()
    out = Path(out)
    names = sorted(cfg.classes)
    plan = video_plan(cfg)
    backgrounds: dict[tuple[str, int], np.ndarray] = {}
    for item in progress_bar(plan, desc="synth videos", unit="video", disable=not progress):
        name, g, c = item["class"], item["group"], item["clip"]
        if (name, g) not in backgrounds:  # one background per class and group, like UCF101's groups
            bg_rng = np.random.default_rng([cfg.seed, _stable(name), g])
            backgrounds = {(name, g): render_background(cfg.size, bg_rng)}
        rng = np.random.default_rng([cfg.seed, _stable(name), g, c, 1])
        video = render_video(name, cfg.frames, cfg.size, rng, backgrounds[(name, g)])
        write_video(out / "videos" / item["path"], video, cfg.fps)
    splits = out / "splits"
    splits.mkdir(parents=True, exist_ok=True)
    (splits / "classInd.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    (splits / "trainlist01.txt").write_text(
        "".join(f"{p['path']} {names.index(p['class']) + 1}\n" for p in plan if p["split"] == "train"))
    (splits / "testlist01.txt").write_text("".join(f"{p['path']}\n" for p in plan if p["split"] == "test"))
    meta = {
        "dataset": "videoprobe-synth",
        "config": asdict(cfg),
        "classes": [{"name": n, "index": i, "kind": class_kind(n), "description": CATALOGUE[n].description}
                    for i, n in enumerate(names)],
        "appearance": [n for n in names if class_kind(n) == "appearance"],
        "motion": [n for n in names if class_kind(n) == "motion"],
        "num_videos": {"train": sum(p["split"] == "train" for p in plan),
                       "test": sum(p["split"] == "test" for p in plan)},
    }
    (out / "classes.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out
