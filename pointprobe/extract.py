"""Per-point features of ScanNet-layout scenes into a feature cache (one cache per split).

dataset (preprocessed layout) -> encoder (checkpoint, random init, or ``raw`` input features) ->
``common.cache`` with, per scene, ``features`` (N, D) and ``labels`` (N,). Resumable (scenes already
cached are skipped), sharded over torchrun ranks, bad scenes reported one line each and skipped.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import dist
from common.cache import CacheKey, fill_cache
from common.config import config_hash, save_config
from common.errors import ConfigError, InputError
from pointprobe.models.encode import Preprocessing, center_shift
from pointprobe.models.registry import (
    RAW,
    EncoderRecord,
    PointEncoderSpec,
    build_encoder,
    encoder_identity,
)

log = logging.getLogger(__name__)


@dataclass
class PointDataSpec:
    root: str = "data/scannet"  # preprocessed layout: {split}/sceneXXXX_YY/*.npy
    splits: list[str] = field(default_factory=lambda: ["train", "val"])  # one cache each: OUT/<split>
    label_set: str = "segment20"  # segment20 | segment200 (labels stored with the features)
    limit: int = 0  # at most this many scenes per split (0 = all)


@dataclass
class ExtractConfig:
    data: PointDataSpec = field(default_factory=PointDataSpec)  # which scenes
    encoder: PointEncoderSpec = field(default_factory=PointEncoderSpec)  # which encoder and weights
    out: str = "runs/features"  # output folder: one feature cache per split in OUT/<split>
    grid_size: float = 0.02  # voxel size in metres (Sonata: 0.02)
    sampling: str = "canonical"  # canonical | first | test (Pointcept test mode, k passes)
    grid_align: str = "world"  # voxel borders: world (multiples of g: the release) | min (floor((c-min)/g))
    dtype: str = "float16"  # features in the cache: float16 | float32
    device: str = "auto"  # auto | cpu | cuda
    max_points: int = 400_000  # larger scenes are encoded in spatial chunks
    tta: int = 1  # test-time augmentation: mean of features over this many views (see tta_views)

    @property
    def preprocessing(self) -> Preprocessing:
        """The recipe these keys name (passed to ``encode_points`` and hashed into the cache key)."""
        return Preprocessing(grid_size=self.grid_size, sampling=self.sampling, align=self.grid_align)


def raw_features(coord: np.ndarray, color: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """The input features themselves (the Sonata preprocessing without an encoder): 9 channels."""
    xyz = center_shift(coord.astype(np.float64)).astype(np.float32)
    return np.concatenate([xyz, color.astype(np.float32) / 255.0, normal.astype(np.float32)], 1)


def tta_views(n: int) -> list[tuple[float, bool]]:
    """(z-rotation in degrees, x-flip) of each test-time view: the identity first, then rotations by
    90 degree steps, then the same with the x axis mirrored (at most 8 views)."""
    if not 1 <= n <= 8:
        raise ConfigError(f"config key 'tta': expected 1..8 views, got {n}")
    views = [(90.0 * k, flip) for flip in (False, True) for k in range(4)]
    return views[:n]


def _augment(points: np.ndarray, angle_deg: float, flip: bool) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    out = points.astype(np.float64) @ rot.T
    if flip:
        out[:, 0] = -out[:, 0]
    return out.astype(np.float32)


def scene_features(model: Any, scene: Any, cfg: ExtractConfig, device: torch.device) -> np.ndarray:
    """(N, D) features of one scene (float16 for a float16 cache with one view, else float32); with
    ``cfg.tta`` > 1 the mean over augmented views.

    A linear probe is affine, so its logits averaged over views (Sonata's test-time augmentation)
    equal its logits of the view-averaged features: averaging here gives exactly that protocol."""
    if model is None:
        return raw_features(scene.coord, scene.color, scene.normal)
    from pointprobe.models import encode_points

    acc = None
    prep = cfg.preprocessing
    views = tta_views(cfg.tta)
    # a float16 cache with one view: encode straight to float16 (half the copy back from a GPU)
    out_dtype = torch.float16 if cfg.dtype == "float16" and len(views) == 1 else torch.float32
    for angle, flip in views:
        coord, normal = scene.coord, scene.normal
        if angle or flip:
            coord, normal = _augment(coord, angle, flip), _augment(normal, angle, flip)
        f = encode_points(model, coord, scene.color, normal, levels=cfg.encoder.levels, prep=prep,
                          device=device, max_points=cfg.max_points, source=scene.name,
                          out_dtype=out_dtype).numpy()
        acc = f if acc is None else acc + f
    return acc / len(views)


def feature_dim(model: Any, levels: int | None) -> int:
    return 9 if model is None else int(model.feature_dim(levels))


def cache_key(rec: EncoderRecord, cfg: ExtractConfig, split: str) -> CacheKey:
    """The key of a split's cache: encoder identity, the preprocessing recipe (``Preprocessing.key``),
    up-cast levels and test-time views, dataset and split."""
    raw = rec.name == RAW
    prep = {**cfg.preprocessing.key(raw=raw), "levels": rec.levels,
            "tta": [] if raw else [list(v) for v in tta_views(cfg.tta)]}
    return CacheKey(encoder=rec.name, checkpoint_sha256=rec.checkpoint_sha256,
                    config_hash=config_hash({"encoder": rec.config, "levels": rec.levels}),
                    preprocessing=prep, dataset=str(Path(cfg.data.root).resolve()), split=split)


def _free_space_check(out: Path, names: dict[str, list[str]], root: str, dim: int, dtype: str) -> None:
    """Warn before starting when the features of every listed scene will not fit on the disk of ``out``
    (rows read from the .npy headers; scenes already cached are counted too, so it errs on the safe side)."""
    from common.paths import free_bytes, human_bytes

    rows = 0
    for split, scenes in names.items():
        for name in scenes:
            try:
                rows += int(np.load(Path(root) / split / name / "coord.npy", mmap_mode="r").shape[0])
            except (OSError, ValueError):
                continue  # reported as a failed scene later
    need = rows * (dim * np.dtype(dtype).itemsize + 8)
    free = free_bytes(out)
    if free is not None and need > free:
        log.warning("%s: the features of %d points need about %s but only %s are free; the run will stop "
                    "when the disk is full (finished scenes are kept)", out, rows, human_bytes(need),
                    human_bytes(free))


def extract(cfg: ExtractConfig, progress: bool = True) -> dict[str, dict[str, str]]:
    """Run extraction for every split; returns {split: {scene: error}} of the scenes that failed.

    Order: the data (a missing root fails here), then the cache keys against any existing cache (as far
    as they are known before the encoder is built: checkpoint hash, preprocessing, dataset), then the
    encoder and the full keys; only then is anything written (config.yaml, caches). A refused or
    failed-at-start run leaves the output folder as it was."""
    from common.cache import check_existing_cache
    from pointprobe.data.scannet import list_scenes, load_scene

    if cfg.dtype not in ("float16", "float32"):
        raise ConfigError(f"config key 'dtype': expected float16 or float32, got {cfg.dtype!r}")
    if cfg.grid_align not in ("min", "world"):
        raise ConfigError(f"config key 'grid_align': expected min or world, got {cfg.grid_align!r}")
    dist.init_from_env()
    out = Path(cfg.out)
    names_of: dict[str, list[str]] = {}
    for split in cfg.data.splits:
        names = list_scenes(cfg.data.root, split)
        names_of[split] = names[: cfg.data.limit] if cfg.data.limit else names
    # what the key holds before the encoder exists
    enc_name, sha = encoder_identity(cfg.encoder)
    levels = None if cfg.encoder.name == RAW else cfg.encoder.levels
    pre = EncoderRecord(enc_name or cfg.encoder.name, "", cfg.encoder.checkpoint, sha, {}, levels)
    for split in cfg.data.splits:
        k = cache_key(pre, cfg, split)
        fields = {"checkpoint_sha256": sha, "preprocessing": k.preprocessing, "dataset": k.dataset,
                  "split": split, **({"encoder": enc_name} if enc_name else {})}
        check_existing_cache(out / split, fields, dtype=cfg.dtype)
    device = dist.pick_device(cfg.device)
    model, rec = build_encoder(cfg.encoder, device)
    dim = feature_dim(model, cfg.encoder.levels)
    for split in cfg.data.splits:
        check_existing_cache(out / split, cache_key(rec, cfg, split).to_dict(), feature_dim=dim,
                             dtype=cfg.dtype)
    if dist.is_main():
        _free_space_check(out, names_of, cfg.data.root, dim, cfg.dtype)
        save_config(cfg, out)
    failures: dict[str, dict[str, str]] = {}
    for split in cfg.data.splits:
        names = names_of[split]
        meta = {"encoder": asdict(rec), "config": asdict(cfg), "label_set": cfg.data.label_set,
                "num_scenes": len(names)}

        def compute(name: str, split: str = split) -> dict:
            folder = Path(cfg.data.root) / split / name
            scene = load_scene(folder)
            labels = scene.labels(cfg.data.label_set)
            feats = scene_features(model, scene, cfg, device)
            if feats.shape[0] != labels.shape[0]:
                raise InputError(folder, f"{feats.shape[0]} features for {labels.shape[0]} labels")
            return {"features": feats, "labels": labels}

        res = fill_cache(out / split, cache_key(rec, cfg, split), dim, cfg.dtype, names, compute, meta=meta,
                         progress=progress)
        failures[split] = res.failures
    return failures
