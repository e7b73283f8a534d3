"""``pointprobe lift``: 2D image features lifted onto the 3D points of ScanNet-layout scenes.

Per scene: every ``frame_stride``-th posed RGB-D frame (NaN/inf poses skipped with a warning) is
resized to ``image_size`` (colour bilinear, depth nearest), encoded by an image encoder
(:mod:`pointprobe.lift.image_encoders`) in batches of ``batch_frames`` frames, and the mesh vertices
are projected into all frames of a batch at once (:mod:`pointprobe.lift.project`): border margin,
depth-based occlusion test, bilinear read of the feature map at the point's pixel, mean over the views
that see the point. Points seen by no frame keep zero features and ``visible_count`` 0.

Visibility (``fusion.rule``, :class:`pointprobe.lift.project.VisibilityRule`): the default ``sensor``
rule keeps a view when ``|depth - z| <= depth_tol_abs + depth_tol_rel * depth`` (0.5 cm + 0.5 %),
drops grazing views (``|cos(normal, ray)| < min_cos`` = 0.2, with the scene's point normals) and
weights views by ``|cos| / z``. ``fusion.rule=openscene`` is OpenScene's rule (``|depth - z| <= 0.25 *
depth``, plain mean), kept for fidelity with that code; it is generous: a surface up to a quarter of the
depth behind an occluder passes (a wall 50 cm behind a chair seen from 3 m), and on generated rooms
44-49 % of the points it counts as seen take a value from a surface more than 5 cm away (oracle
benchmark, ``tools/bench_lift_fidelity.py``, section ``bench_lift_fidelity`` of docs/benchmarks.md).

Output: one ``common.cache`` per split under ``out/`` (``features`` (N, D), ``labels``,
``visible_count`` (N,) int32 per scene), with the same meta keys as ``pointprobe extract`` so that
``pointprobe probe features=[out]`` probes them like any encoder (row "<encoder> lifted to 3D"), and
``out/coverage.{json,md}`` with the fraction of points (and of labelled points) seen per split.

Inputs: ``data.raw`` is a raw ScanNet root (``scans/sceneXXXX_YY/`` with ``color/ depth/ pose/
intrinsic/``). Points and labels come from the preprocessed layout ``data.root`` (its split folders
decide the splits; its points are the raw mesh vertices in the same order, which is checked against
the mesh header), or, with ``data.root`` empty, from the raw meshes and ``scannetv2_<split>.txt``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import dist
from common.cache import CacheKey, FeatureCache, fill_cache
from common.config import config_hash, save_config
from common.errors import ConfigError, InputError
from pointprobe.lift.image_encoders import ImageEncoder, ImageEncoderRecord, create_image_encoder
from pointprobe.lift.project import RULES, FusionAccumulator, PairHook, VisibilityRule, world_to_camera

log = logging.getLogger(__name__)

__all__ = [
    "ImageEncoderConfig",
    "LiftDataConfig",
    "FusionConfig",
    "LiftConfig",
    "FrameBatch",
    "LiftResult",
    "select_frames",
    "read_frames",
    "scene_intrinsics",
    "lift_scene",
    "lift_cache_key",
    "run_lift",
    "coverage_summary",
]


# ---------------------------------------------------------------------------------------------- config
@dataclass
class ImageEncoderConfig:
    """Which 2D encoder: ``patchstats`` / ``rgb`` (built in), a DINO(v2) hub name, or ``timm:<model>``."""

    name: str = "patchstats"
    checkpoint: str | None = None  # weights file (hub models: default <hub>/checkpoints/<file>)
    hub_dir: str | None = None  # torch hub folder holding the hub code + checkpoints (default: torch's)
    input_height: int = 0  # ViT input height in pixels (0 = the frame's image_size height)
    config: dict = field(default_factory=dict)  # built-in encoder options, e.g. {stride: 8}
    label: str | None = None  # display name in probe tables (default "<name> lifted to 3D")


@dataclass
class LiftDataConfig:
    raw: str = "data/scannet_raw"  # raw ScanNet root: scans/sceneXXXX_YY/{color,depth,pose,intrinsic}
    root: str = ""  # preprocessed layout {split}/sceneXXXX_YY (points, labels, splits); "" = raw meshes
    splits: list[str] = field(default_factory=lambda: ["train", "val"])
    label_set: str = "segment20"
    limit: int = 0  # at most this many scenes per split (0 = all)


@dataclass
class FusionConfig:
    frame_stride: int = 20  # every n-th frame (OpenScene: 20 on ScanNet)
    max_frames: int = 0  # at most this many frames per scene, evenly spread (0 = all selected)
    image_size: tuple[int, int] = (320, 240)  # (W, H) colour and depth are resized to
    batch_frames: int = 16  # frames encoded and projected together
    margin: int = 10  # pixels at the border where points are dropped
    rule: str = "sensor"  # visibility rule: sensor (default) | openscene (OpenScene's, for fidelity)
    occlusion_threshold: float = 0.25  # openscene: |depth - z| <= threshold * depth (or <= threshold m)
    occlusion_relative: bool = True  # openscene: threshold relative to the depth (else metres)
    depth_tol_abs: float = 0.005  # sensor: |depth - z| <= depth_tol_abs + depth_tol_rel * depth
    depth_tol_rel: float = 0.005
    min_cos: float = 0.2  # sensor: drop views where |cos(point normal, view ray)| < min_cos (grazing)
    angle_power: float = 1.0  # sensor: view weight |cos|^angle_power / z^distance_power
    distance_power: float = 1.0
    max_depth: float = 0.0  # sensor: drop views farther than this many metres (0 = no limit)
    slope_tol: float = 0.0  # sensor: + slope_tol * (z / focal) * tan(incidence) on the depth tolerance
    edge_tol: float = 0.0  # sensor: drop pixels whose 3x3 depth range > edge_tol * depth (0 = off)
    color_intrinsics: bool = True  # read features at the colour camera's projection (when it differs)
    point_chunk: int = 262_144  # points projected at once (memory bound)


@dataclass
class LiftConfig:
    data: LiftDataConfig = field(default_factory=LiftDataConfig)
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    out: str = "runs/lift"
    dtype: str = "float16"
    device: str = "auto"
    progress: bool = True


def validate(cfg: LiftConfig) -> None:
    """Cross-field checks, ``ConfigError`` naming the key."""
    f = cfg.fusion
    if cfg.dtype not in ("float16", "float32"):
        raise ConfigError(f"config key 'dtype': expected float16 or float32, got {cfg.dtype!r}")
    if f.frame_stride < 1:
        raise ConfigError(f"config key 'fusion.frame_stride' must be >= 1, got {f.frame_stride}")
    if f.batch_frames < 1:
        raise ConfigError(f"config key 'fusion.batch_frames' must be >= 1, got {f.batch_frames}")
    if min(f.image_size) < 8:
        raise ConfigError(f"config key 'fusion.image_size' is too small: {list(f.image_size)}")
    if f.margin < 0 or 2 * f.margin >= min(f.image_size):
        raise ConfigError(f"config key 'fusion.margin' ({f.margin}) leaves no pixels of {list(f.image_size)}")
    if f.occlusion_threshold <= 0:
        raise ConfigError("config key 'fusion.occlusion_threshold' must be > 0")
    if f.rule not in RULES:
        raise ConfigError(f"config key 'fusion.rule': expected one of {', '.join(RULES)}, got {f.rule!r}")
    if f.depth_tol_abs < 0 or f.depth_tol_rel < 0 or f.depth_tol_abs + f.depth_tol_rel <= 0:
        raise ConfigError("config keys 'fusion.depth_tol_abs' / 'fusion.depth_tol_rel' must be >= 0, "
                          "not both 0")
    if f.max_depth < 0:
        raise ConfigError(f"config key 'fusion.max_depth' must be >= 0 (0 = no limit), got {f.max_depth}")
    if f.slope_tol < 0:
        raise ConfigError(f"config key 'fusion.slope_tol' must be >= 0 (0 = off), got {f.slope_tol}")
    if f.edge_tol < 0:
        raise ConfigError(f"config key 'fusion.edge_tol' must be >= 0 (0 = off), got {f.edge_tol}")
    if not 0 <= f.min_cos < 1:
        raise ConfigError(f"config key 'fusion.min_cos' must be in [0, 1), got {f.min_cos}")
    if not cfg.data.raw:
        raise ConfigError("config key 'data.raw' is empty: give the raw ScanNet root with the RGB-D frames")


def visibility_rule(f: FusionConfig) -> VisibilityRule:
    """The projection module's rule for a fusion spec."""
    if f.rule == "openscene":
        return VisibilityRule.openscene(f.occlusion_threshold, f.occlusion_relative)
    return VisibilityRule("sensor", tol_abs=f.depth_tol_abs, tol_rel=f.depth_tol_rel, min_cos=f.min_cos,
                          angle_power=f.angle_power, distance_power=f.distance_power, max_depth=f.max_depth,
                          slope_tol=f.slope_tol, edge_tol=f.edge_tol)


# ---------------------------------------------------------------------------------------------- frames
@dataclass
class FrameBatch:
    """Frames resized to one size: colors (B, H, W, 3) uint8, depths (B, H, W) float32 metres,
    poses (B, 4, 4) float64 camera-to-world."""

    indices: list[int]
    colors: np.ndarray
    depths: np.ndarray
    poses: np.ndarray

    def images(self) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1]."""
        return torch.from_numpy(self.colors).permute(0, 3, 1, 2).float().div_(255.0)


def select_frames(scene_dir: str | Path, stride: int = 1, max_frames: int = 0) -> tuple[list[int], list[int]]:
    """(frames to use, frames skipped for a NaN/inf pose): every ``stride``-th frame by position,
    then at most ``max_frames`` of them evenly spread. Warns when poses were skipped."""
    from pointprobe.data.frames import frame_indices, pose_is_valid, read_matrix

    d = Path(scene_dir)
    picked = frame_indices(d)[::stride]
    good, bad = [], []
    for i in picked:
        (good if pose_is_valid(read_matrix(d / "pose" / f"{i}.txt")) else bad).append(i)
    if bad:
        shown = ", ".join(map(str, bad[:8])) + (" ..." if len(bad) > 8 else "")
        warnings.warn(f"{d}: skipped {len(bad)} frame(s) with NaN/inf poses ({shown})", stacklevel=2)
    if max_frames and len(good) > max_frames:
        keep = np.unique(np.linspace(0, len(good) - 1, max_frames).round().astype(int))
        good = [good[k] for k in keep]
    return good, bad


def read_frames(scene_dir: str | Path, indices: list[int], image_size: tuple[int, int]) -> FrameBatch:
    """Read frames and resize colour (bilinear) and depth (nearest) to ``image_size`` = (W, H)."""
    from PIL import Image

    from pointprobe.data.frames import read_frame

    W, H = image_size
    colors = np.empty((len(indices), H, W, 3), np.uint8)
    depths = np.empty((len(indices), H, W), np.float32)
    poses = np.empty((len(indices), 4, 4), np.float64)
    for k, i in enumerate(indices):
        fr = read_frame(scene_dir, i)
        c = fr.color
        if c.shape[:2] != (H, W):
            c = np.asarray(Image.fromarray(c).resize((W, H), Image.BILINEAR))
        dm = fr.depth
        if dm.shape != (H, W):
            dm = np.asarray(Image.fromarray(dm).resize((W, H), Image.NEAREST))
        colors[k], depths[k], poses[k] = c, dm, fr.pose
    return FrameBatch(list(indices), colors, depths, poses)


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, UnidentifiedImageError) as e:
        raise InputError(path, f"cannot read image ({e})") from None


def scene_intrinsics(scene_dir: str | Path, first_frame: int, image_size: tuple[int, int],
                     color_intrinsics: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(K_depth, K_color or None) scaled to ``image_size``; None when the colour camera's scaled
    intrinsics equal the depth camera's (or colour intrinsics are off / absent)."""
    from pointprobe.data.frames import read_intrinsics, scale_intrinsics

    d = Path(scene_dir)
    dsize = _image_size(d / "depth" / f"{first_frame}.png")
    K_depth = scale_intrinsics(read_intrinsics(d, "depth"), dsize, image_size)
    if not color_intrinsics or not (d / "intrinsic" / "intrinsic_color.txt").is_file():
        return K_depth, None
    csize = _image_size(d / "color" / f"{first_frame}.jpg")
    K_color = scale_intrinsics(read_intrinsics(d, "color"), csize, image_size)
    return K_depth, (None if np.allclose(K_color, K_depth, atol=1e-6) else K_color)


# ---------------------------------------------------------------------------------------------- lifting
@dataclass
class LiftResult:
    """Fused features (N, D) float32 (zero where unseen), views per point (N,) int32, frame counts."""

    features: np.ndarray
    visible_count: np.ndarray
    frames_used: int
    frames_skipped: int
    pairs: int

    @property
    def coverage(self) -> float:
        """Fraction of points seen by at least one frame."""
        return float((self.visible_count > 0).mean()) if len(self.visible_count) else 0.0


FeatureFn = Callable[[FrameBatch], torch.Tensor]


def encoder_feature_fn(encoder: ImageEncoder, device: torch.device) -> FeatureFn:
    """A function FrameBatch -> (B, D, h, w) feature maps running ``encoder`` on ``device``."""
    encoder = encoder.to(device).eval()

    def fn(batch: FrameBatch) -> torch.Tensor:
        with torch.inference_mode():
            return encoder(batch.images().to(device))

    return fn


def lift_scene(scene_dir: str | Path, coord: np.ndarray, features: ImageEncoder | FeatureFn, dim: int,
               fusion: FusionConfig, device: str | torch.device = "cpu", progress: bool = False,
               normal: np.ndarray | None = None,
               pair_hook: Callable[[FrameBatch, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                    torch.Tensor], None] | None = None) -> LiftResult:
    """Lift 2D features of a scene's frames onto ``coord`` (N, 3) world points.

    ``features``: an image encoder or any function ``FrameBatch -> (B, dim, h, w)`` maps covering the
    frames (tests render known per-pixel values this way). ``normal`` (N, 3): point normals for the
    ``sensor`` rule's grazing-angle test and angle weight (without them only the depth test and the
    distance weight apply). ``pair_hook(batch, f_idx, point_idx, u, v, weight)`` sees every fused view
    (benchmarks measure where each value came from).
    """
    from common.progress import progress as progress_bar

    device = torch.device(device)
    fn = encoder_feature_fn(features, device) if isinstance(features, ImageEncoder) else features
    coord = np.asarray(coord)
    if coord.ndim != 2 or coord.shape[1] != 3 or not np.isfinite(coord).all():
        raise InputError(scene_dir, f"points must be a finite (N, 3) array, got shape {coord.shape}")
    frames, skipped = select_frames(scene_dir, fusion.frame_stride, fusion.max_frames)
    nrm = None
    if normal is not None:
        normal = np.asarray(normal)
        if normal.shape != coord.shape:
            raise InputError(scene_dir, f"normals have shape {normal.shape}, points {coord.shape}")
        nrm = torch.from_numpy(np.nan_to_num(normal.astype(np.float32)))
    acc = FusionAccumulator(torch.from_numpy(coord.astype(np.float32)), dim, fusion.margin,
                            fusion.occlusion_threshold, fusion.occlusion_relative, fusion.point_chunk, device,
                            rule=visibility_rule(fusion), normal=nrm)
    if frames:
        size = tuple(fusion.image_size)
        K_depth, K_color = scene_intrinsics(scene_dir, frames[0], size, fusion.color_intrinsics)
        Kd = torch.from_numpy(K_depth)
        Kc = None if K_color is None else torch.from_numpy(K_color)
        batches = [frames[i : i + fusion.batch_frames] for i in range(0, len(frames), fusion.batch_frames)]
        with ThreadPoolExecutor(1) as pool:  # read the next batch while this one is encoded
            pending = pool.submit(read_frames, scene_dir, batches[0], size)
            for b in progress_bar(range(len(batches)), desc=Path(scene_dir).name, unit="batch", leave=False,
                                  disable=not progress):
                fb = pending.result()
                if b + 1 < len(batches):
                    pending = pool.submit(read_frames, scene_dir, batches[b + 1], size)
                maps = fn(fb)
                if maps.dim() != 4 or maps.shape[:2] != (len(fb.indices), dim):
                    raise InputError(scene_dir, f"feature maps have shape {tuple(maps.shape)}, expected "
                                                f"({len(fb.indices)}, {dim}, h, w)")
                w2c = world_to_camera(torch.from_numpy(fb.poses))
                hook: PairHook | None = None
                if pair_hook is not None:
                    def hook(*pair, fb=fb):  # noqa: E306
                        pair_hook(fb, *pair)
                acc.add(maps, torch.from_numpy(fb.depths), w2c, Kd, Kc, hook=hook)
    feats = acc.mean().cpu().numpy()
    count = acc.count.cpu().numpy().astype(np.int32)
    return LiftResult(feats, count, len(frames), len(skipped), acc.pairs)


# ---------------------------------------------------------------------------------------------- dataset
def _ply_vertex_count(path: Path) -> int | None:
    """Vertex count from a PLY header (None when the file is absent)."""
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        for _ in range(200):
            line = f.readline()
            if not line or line.strip() == b"end_header":
                break
            words = line.split()
            if len(words) == 3 and words[0] == b"element" and words[1] == b"vertex":
                return int(words[2])
    raise InputError(path, "PLY header has no vertex element")


@dataclass
class _SceneSource:
    name: str
    frames_dir: Path
    points: Path | None  # preprocessed folder, or None (raw mesh)


def _scene_sources(cfg: LiftConfig, split: str) -> list[_SceneSource]:
    from pointprobe.data.scannet import find_raw_scene, list_scenes, read_split_file

    raw = Path(cfg.data.raw)
    if cfg.data.root:
        names = list_scenes(cfg.data.root, split)
        out = [_SceneSource(n, find_raw_scene(raw, n), Path(cfg.data.root) / split / n) for n in names]
    else:
        names = read_split_file(raw / f"scannetv2_{split}.txt")
        out = [_SceneSource(n, find_raw_scene(raw, n), None) for n in names]
    return out[: cfg.data.limit] if cfg.data.limit else out


def _load_points(src: _SceneSource, cfg: LiftConfig,
                 label_map: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coord (N, 3), labels (N,), normals (N, 3)) of a scene, checked against the raw mesh's vertex
    count."""
    from pointprobe.data.scannet import load_scene, raw_scene_files, read_raw_scene

    if src.points is not None:
        scene = load_scene(src.points)
        mesh = raw_scene_files(src.frames_dir)["mesh"]
        nv = _ply_vertex_count(mesh)
        if nv is not None and nv != len(scene):
            raise InputError(src.points, f"{len(scene)} points but the raw mesh {mesh.name} has {nv} "
                                         "vertices (the preprocessed and raw scenes do not match)")
    else:
        scene = read_raw_scene(src.frames_dir, label_map)
    return scene.coord, scene.labels(cfg.data.label_set), scene.normal


def lift_cache_key(cfg: LiftConfig, rec: ImageEncoderRecord, split: str) -> CacheKey:
    """The cache key: image encoder + weights hash + every setting that changes the features."""
    f = cfg.fusion
    prep = {"frame_stride": f.frame_stride, "max_frames": f.max_frames, "image_size": list(f.image_size),
            "margin": f.margin, "color_intrinsics": f.color_intrinsics, "upsample": "bilinear",
            "rule": asdict(visibility_rule(f))}
    enc_cfg = {"image_encoder": rec.name, "config": rec.config}
    dataset = str(Path(cfg.data.root or cfg.data.raw).resolve())
    return CacheKey(encoder=f"lift/{rec.name}", checkpoint_sha256=rec.checkpoint_sha256,
                    config_hash=config_hash({**enc_cfg, **prep}), preprocessing=prep, dataset=dataset,
                    split=split)


def _encoder_meta(cfg: LiftConfig, rec: ImageEncoderRecord) -> dict:
    """The ``meta["encoder"]`` record the probe reads (same fields as ``pointprobe.extract``)."""
    return {"name": f"lift/{rec.name}", "label": cfg.image_encoder.label or f"{rec.name} lifted to 3D",
            "checkpoint": rec.checkpoint, "checkpoint_sha256": rec.checkpoint_sha256,
            "config": {"image_encoder": asdict(rec), "fusion": asdict(cfg.fusion)}, "levels": None}


def coverage_summary(cache: FeatureCache) -> dict:
    """Seen fractions of one lifted-feature cache (from its ``visible_count`` arrays), overall and
    ``per_scene`` (scene -> fraction of its points seen)."""
    n = seen = lab = lab_seen = views = 0
    per_scene: dict[str, float] = {}
    for item in cache.items():
        a = cache.load(item, ("labels", "visible_count"))
        c = np.asarray(a["visible_count"])
        y = np.asarray(a["labels"])
        n += c.size
        seen += int((c > 0).sum())
        lab += int((y >= 0).sum())
        lab_seen += int(((y >= 0) & (c > 0)).sum())
        views += int(c.sum())
        per_scene[item] = float((c > 0).mean()) if c.size else 0.0
    return {"scenes": len(cache), "points": n, "seen_fraction": seen / n if n else 0.0,
            "labelled_points": lab, "labelled_seen_fraction": lab_seen / lab if lab else float("nan"),
            "mean_views_per_seen_point": views / seen if seen else 0.0, "per_scene": per_scene}


def run_lift(cfg: LiftConfig, features: FeatureFn | None = None, dim: int | None = None) -> dict:
    """Lift every scene of every split into ``cfg.out/<split>`` caches; returns ``{"failures": {split:
    {scene: error}}, "coverage": {split: summary}}``. ``features``/``dim`` replace the image encoder
    (tests)."""
    from common.report import write_table
    from pointprobe.data.scannet import read_label_map

    validate(cfg)
    dist.init_from_env()
    device = dist.pick_device(cfg.device)
    if features is None:
        spec = cfg.image_encoder
        encoder, rec = create_image_encoder(spec.name, spec.checkpoint, spec.hub_dir, spec.input_height,
                                            **spec.config)
        fn: FeatureFn = encoder_feature_fn(encoder, device)
        dim = encoder.dim
    else:
        if dim is None:
            raise ConfigError("run_lift: give dim with a custom feature function")
        fn = features
        rec = ImageEncoderRecord(cfg.image_encoder.name, None, "none", dim, 1, dict(cfg.image_encoder.config))
    out = Path(cfg.out)
    if dist.is_main():
        save_config(cfg, out)
    label_map = None
    if not cfg.data.root:
        label_map = read_label_map(Path(cfg.data.raw) / "scannetv2-labels.combined.tsv")
    failures: dict[str, dict[str, str]] = {}
    coverage: dict[str, dict] = {}
    for split in cfg.data.splits:
        sources = {s.name: s for s in _scene_sources(cfg, split)}
        meta = {"encoder": _encoder_meta(cfg, rec), "image_encoder": asdict(rec), "config": asdict(cfg),
                "label_set": cfg.data.label_set, "num_scenes": len(sources), "lifted": True,
                "coverage": "per-scene array visible_count (views that saw each point; 0 = unseen, features "
                            "zero); per-split fractions in ../coverage.json"}

        def compute(name: str, sources: dict[str, _SceneSource] = sources) -> dict:
            src = sources[name]
            coord, labels, normal = _load_points(src, cfg, label_map)
            res = lift_scene(src.frames_dir, coord, fn, int(dim), cfg.fusion, device, normal=normal)
            log.info("%s: %d frames (%d skipped), %.1f%% of %d points seen", name, res.frames_used,
                     res.frames_skipped, 100 * res.coverage, len(coord))
            return {"features": res.features, "labels": labels, "visible_count": res.visible_count}

        filled = fill_cache(out / split, lift_cache_key(cfg, rec, split), int(dim), cfg.dtype, list(sources),
                            compute, meta=meta, progress=cfg.progress, progress_desc=f"lift {split}")
        failures[split] = filled.failures
        if dist.is_main():
            coverage[split] = coverage_summary(FeatureCache(out / split))
    if dist.is_main() and coverage:
        rows = [{"split": s, **{k: v for k, v in c.items() if k != "per_scene"}} for s, c in coverage.items()]
        write_table(rows, out / "coverage", f"Coverage of {rec.name} features lifted to 3D",
                    meta={"image encoder": rec.name, "fusion": asdict(cfg.fusion),
                          "seen fraction per scene": {s: c["per_scene"] for s, c in coverage.items()}},
                    float_format=".4f")
    return {"failures": failures, "coverage": coverage}
