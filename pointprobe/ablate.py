"""Input ablations of a trained point probe: features extracted live (no cache) from the scenes of a split
with colour and / or normals removed (zeros) or the normals estimated from the points with open3d, as a
user with a raw LiDAR or colourless scan would have them; one table of mIoU / mAcc / allAcc per ablation
and the drop against the full inputs.

The probe is the one trained on full inputs (``pointprobe probe``): the table measures what a frozen
encoder + probe lose under each input shift, not what a probe retrained on ablated inputs would reach."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.errors import CheckpointError, ConfigError, InputError

log = logging.getLogger(__name__)

ABLATIONS = ("full", "no_color", "no_normal", "est_normal", "no_color_est_normal")
ORIENTS = ("centre", "up", "none")
_DESCRIBE = {
    "full": "colour and normals as stored",
    "no_color": "colour set to zeros (black)",
    "no_normal": "normals set to zeros",
    "est_normal": "normals estimated from the points (open3d)",
    "no_color_est_normal": "colour zeros, normals estimated (a LiDAR-only scan)",
}


@dataclass
class AblateConfig:
    probe: str = ""  # probe_*.pt written by `pointprobe probe`
    data: str = ""  # preprocessed dataset root: <data>/<split>/sceneXXXX_YY/*.npy
    split: str = "val"  # evaluation split
    out: str = "runs/ablate"  # ablation.md / ablation.json
    ablations: list[str] = field(default_factory=lambda: list(ABLATIONS))
    normal_radius: float = 0.1  # open3d hybrid search: neighbours within this radius (metres) ...
    normal_knn: int = 30  # ... at most this many
    orient: str = "centre"  # centre: towards the scene's bounding-box centre | up: +z | none
    dtype: str = "auto"  # features as the probe's training cache stored them (auto: read its manifest)
    limit: int = 0  # at most this many scenes (0 = all)
    device: str = "auto"

    def validate(self) -> None:
        bad = [a for a in self.ablations if a not in ABLATIONS]
        if bad or not self.ablations:
            raise ConfigError(f"ablations must be a non-empty list of {', '.join(ABLATIONS)}; "
                              f"got {self.ablations}")
        if self.orient not in ORIENTS:
            raise ConfigError(f"orient must be one of {', '.join(ORIENTS)}, not {self.orient!r}")
        if self.normal_radius <= 0 or self.normal_knn < 3:
            raise ConfigError("normal_radius must be > 0 and normal_knn >= 3")
        if self.dtype not in ("auto", "float16", "float32"):
            raise ConfigError(f"dtype must be auto, float16 or float32, not {self.dtype!r}")


def estimate_normals(coord: np.ndarray, radius: float = 0.1, max_nn: int = 30, orient: str = "centre"
                     ) -> np.ndarray:
    """(N, 3) float32 unit normals of a point cloud by open3d (PCA of a hybrid radius / KNN neighbourhood).

    Orientation (PCA gives a sign at random): ``centre`` turns each normal towards the centre of the
    scene's bounding box, where the scanner stood for an indoor room (floors point up, walls inwards,
    like the faces of a reconstructed mesh); ``up`` towards +z; ``none`` leaves open3d's signs."""
    import open3d as o3d

    if len(coord) == 0:
        return np.zeros((0, 3), np.float32)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(coord, dtype=np.float64)))
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=radius, max_nn=max_nn))
    if orient == "centre":
        lo, hi = np.min(coord, 0), np.max(coord, 0)
        pcd.orient_normals_towards_camera_location((lo + hi) / 2.0)
    elif orient == "up":
        pcd.orient_normals_to_align_with_direction(np.array([0.0, 0.0, 1.0]))
    n = np.asarray(pcd.normals, dtype=np.float32)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def ablate_scene(scene, ablation: str, cfg: AblateConfig):
    """The scene as the encoder sees it under ``ablation`` (a copy; the stored arrays stay)."""
    color, normal = scene.color, scene.normal
    if "no_color" in ablation:
        color = np.zeros_like(scene.color)
    if ablation == "no_normal":
        normal = np.zeros_like(scene.normal)
    elif ablation.endswith("est_normal"):
        normal = estimate_normals(scene.coord, cfg.normal_radius, cfg.normal_knn, cfg.orient)
    return dataclasses.replace(scene, color=color, normal=normal)


def _cache_dtype(meta: dict, split: str) -> str:
    """The dtype of the cache the probe was trained on (its eval split's, else its train split's)."""
    from common.cache import FeatureCache
    from common.errors import CacheError

    folder = meta.get("features")
    for s in (split, (meta.get("cache_key") or {}).get("split")):
        if folder and s and FeatureCache.exists(Path(folder) / s):
            try:
                return FeatureCache(Path(folder) / s).dtype
            except CacheError:
                continue
    return "float16"  # `pointprobe extract`'s default


def _scene_dirs(root: Path, split: str, limit: int) -> list[Path]:
    d = root / split
    if not d.is_dir():
        raise InputError(d, "split folder not found (expected <data>/<split>/<scene>/coord.npy)")
    scenes = sorted(p for p in d.iterdir() if p.is_dir() and (p / "coord.npy").is_file())
    if not scenes:
        raise InputError(d, "no scenes (folders with coord.npy)")
    return scenes[:limit] if limit else scenes


def run_ablation(cfg: AblateConfig) -> dict:
    """Evaluate the probe under every ablation of ``cfg.ablations``; writes ``ablation.md/json`` in
    ``cfg.out`` and returns ``{"rows", "meta", "md", "json"}``."""
    import torch

    from common.dist import pick_device
    from common.metrics import segmentation_metrics
    from common.probes.linear import ProbeData, evaluate_linear_probe, load_probe
    from common.report import checkpoint_id, write_table
    from pointprobe.data.scannet import load_scene
    from pointprobe.extract import scene_features
    from pointprobe.label import encoder_from_probe, extract_config_for_probe
    from pointprobe.models.registry import RAW, build_encoder

    cfg.validate()
    if not cfg.probe or not cfg.data:
        raise ConfigError("probe and data must both be set")
    result = load_probe(cfg.probe)
    spec = encoder_from_probe(result.meta)
    key = result.meta.get("cache_key", {})
    dtype = _cache_dtype(result.meta, cfg.split) if cfg.dtype == "auto" else cfg.dtype
    ecfg = dataclasses.replace(extract_config_for_probe(spec, key.get("preprocessing", {})), dtype=dtype)
    dev = pick_device(cfg.device)
    model, rec = build_encoder(spec, dev)
    if spec.name != RAW and spec.checkpoint and rec.checkpoint_sha256 != key.get("checkpoint_sha256"):
        raise CheckpointError(f"{spec.checkpoint}: sha256 {rec.checkpoint_sha256[:12]} differs from the one "
                              f"the probe was trained on ({str(key.get('checkpoint_sha256'))[:12]})")
    label_set = "segment200" if result.num_classes > 20 else "segment20"
    scenes = _scene_dirs(Path(cfg.data), cfg.split, cfg.limit)
    k = result.num_classes
    conf = {a: np.zeros((k, k), dtype=np.int64) for a in cfg.ablations}
    points = 0
    feature_change: dict[str, float] = {}
    for path in scenes:
        scene = load_scene(path)
        y = scene.labels(label_set)
        points += int((y >= 0).sum())
        full = None
        for a in cfg.ablations:
            with torch.no_grad():
                f = scene_features(model, ablate_scene(scene, a, cfg), ecfg, dev)
            # as the cache stored them (its writer casts, e.g. raw float32 inputs to float16), then float32
            f = np.asarray(f).astype(dtype, copy=False).astype(np.float32)
            if a == "full":
                full = f
            elif full is not None:  # mean relative change of the features against the full inputs
                rel = np.linalg.norm(f - full, axis=1) / np.maximum(np.linalg.norm(full, axis=1), 1e-12)
                feature_change[a] = feature_change.get(a, 0.0) + float(rel.sum())
            if not (y >= 0).any():
                continue  # no labelled point: nothing to score (its features still count above)
            data = ProbeData.from_arrays(f, y, np.zeros(len(y), dtype=np.int64))
            scores = evaluate_linear_probe(result, data, device=dev)
            conf[a] += np.asarray(scores["confusion"], dtype=np.int64)
        log.info("ablate: %s done (%d points)", scene.name, len(y))
    n_all = sum(len(np.load(p / "coord.npy", mmap_mode="r")) for p in scenes)
    ckpt = checkpoint_id(key.get("checkpoint_sha256") or rec.checkpoint_sha256)
    metrics = {a: segmentation_metrics(conf[a], result.class_names) for a in cfg.ablations}
    base = metrics.get("full")
    rows = []
    for a in cfg.ablations:
        m = metrics[a]
        row = {"ablation": a, "inputs": _DESCRIBE[a]}
        for name in ("mIoU", "mAcc", "allAcc"):
            row[name] = 100 * float(m[name])
        for name in ("mIoU", "mAcc", "allAcc"):
            row[f"drop {name}"] = 100 * float(base[name] - m[name]) if base is not None else None
        row["feature change"] = (round(feature_change[a] / max(n_all, 1), 4) if a in feature_change
                                 else (0.0 if a == "full" else None))
        row["checkpoint"] = ckpt
        rows.append(row)
    notes = [
        "the probe was trained on full inputs and is frozen: each row is that probe on features extracted "
        "live (no cache) from the changed inputs, not a probe retrained on them",
        "drop = full - ablation, in points of the metric (positive: the ablation costs that much)",
        "feature change = mean over points of |f_ablated - f_full| / |f_full|",
        f"estimated normals: open3d estimate_normals, hybrid search (radius {cfg.normal_radius:g} m, at most "
        f"{cfg.normal_knn} neighbours), oriented "
        + {"centre": "towards the centre of the scene's bounding box (where an indoor scanner stood: floors "
                     "up, walls inwards, like mesh face normals)",
           "up": "towards +z", "none": "as open3d returns them (random signs)"}[cfg.orient],
        f"features as the probe's cache stored them ({dtype}); extraction settings from the probe's cache "
        f"key (grid {ecfg.grid_size:g} m, sampling {ecfg.sampling}, tta {ecfg.tta})",
    ]
    if spec.name == RAW:
        notes.append("raw encoder: the features are the inputs themselves (coord, colour, normal)")
    meta = {
        "probe": str(cfg.probe),
        "encoder": spec.label or spec.name,
        "checkpoint_sha256": key.get("checkpoint_sha256") or rec.checkpoint_sha256,
        "data": str(Path(cfg.data).resolve()),
        "split": cfg.split,
        "scenes": len(scenes),
        "labelled points": points,
        "label_set": label_set,
        "metrics": "percent, over all labelled points of the split (as `pointprobe probe`)",
        "per_class_iou": {a: [None if not np.isfinite(v) else 100 * float(v) for v in metrics[a]["iou"]]
                          for a in cfg.ablations},
        "class_names": result.class_names,
        "notes": notes,
        "config": dataclasses.asdict(cfg),
    }
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    md, js = write_table(rows, out / "ablation",
                         f"Input ablations: {meta['encoder']} on {cfg.split} ({len(scenes)} scene"
                         f"{'s' if len(scenes) != 1 else ''})",
                         meta={k: v for k, v in meta.items()
                               if k not in ("per_class_iou", "class_names", "config", "notes")}
                         | {"details": meta},
                         footnotes=notes, float_format=".2f")
    return {"rows": rows, "meta": meta, "md": str(md), "json": str(js)}
