"""Label new scenes with a trained probe: rebuild the encoder the probe was trained on, predict, write."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from common.dist import pick_device
from common.errors import CheckpointError, InputError
from common.metrics import confusion_matrix, segmentation_metrics
from common.probes.linear import load_probe, predict
from pointprobe.data.scannet import SCANNET20_PALETTE
from pointprobe.extract import ExtractConfig, scene_features
from pointprobe.models.registry import RAW, PointEncoderConfig, build_encoder

log = logging.getLogger(__name__)
IGNORE_RGB = np.array([0, 0, 0], dtype=np.uint8)  # colour of unlabelled points in label pictures


def _read_any_scene(path: Path):
    """A preprocessed scene folder (with its labels), or any scene ``load_points`` reads (a ``.ply``, a raw
    ScanNet folder, ``.npy`` / ``.npz``) with labels unknown."""
    from pointprobe.data.points import load_points, points_scene
    from pointprobe.data.scannet import load_scene

    if path.is_dir() and (path / "coord.npy").is_file():
        return load_scene(path)
    return points_scene(load_points(path))


def labelled_ply_colors(labels: np.ndarray, num_classes: int = 20) -> np.ndarray:
    """(N,) class ids (-1 = ignore) -> (N, 3) uint8 colours of a labelled PLY: the ScanNet 20-class palette,
    black for ignored points; more than 20 classes use a hashed palette after the 20 colours. (Pictures
    use ``common.pca.label_colors``: float colours, grey for ignored points.)"""
    labels = np.asarray(labels).astype(np.int64)
    if num_classes <= len(SCANNET20_PALETTE):
        table = SCANNET20_PALETTE
    else:
        rng = np.random.default_rng(12345)
        table = rng.integers(40, 256, size=(num_classes, 3)).astype(np.uint8)
        table[: len(SCANNET20_PALETTE)] = SCANNET20_PALETTE
    out = np.empty((labels.shape[0], 3), dtype=np.uint8)
    valid = labels >= 0
    out[valid] = table[labels[valid] % len(table)]
    out[~valid] = IGNORE_RGB
    return out


def encoder_from_probe(meta: dict) -> PointEncoderConfig:
    """The encoder spec recorded by extraction (checkpoint path or random-init seed and config)."""
    enc = meta.get("encoder") or {}
    if not enc:
        raise CheckpointError("the probe records no encoder (was it trained on a `pointprobe extract` "
                              "cache?)")
    sha = enc.get("checkpoint_sha256", "")
    seed = int(sha.split(":", 1)[1]) if sha.startswith("random:") else 0
    return PointEncoderConfig(name=enc["name"], checkpoint=enc.get("checkpoint"), seed=seed,
                            config=dict(enc.get("config") or {}) if not enc.get("checkpoint") else {},
                            levels=enc.get("levels"), label=enc.get("label"))


def extract_config_for_probe(spec: PointEncoderConfig, prep: dict) -> ExtractConfig:
    """The extraction settings of the cache a probe was trained on (its key's ``preprocessing``), so
    new scenes get features the probe knows. A key without ``grid_align`` is from a cache made before
    the release's voxelisation ("world") became the default: its voxels were "min"-aligned."""
    return ExtractConfig(encoder=spec, grid_size=float(prep.get("grid_size", 0.02)),
                         sampling=prep.get("sampling", "canonical"), grid_align=prep.get("grid_align", "min"),
                         tta=max(1, len(prep.get("tta") or [])))


def label_scenes(probe_path: str, scenes: list[str], out: str, device: str = "auto") -> dict[str, str]:
    """Predict classes for each scene; write ``<scene>.ply`` (class colours + label) and ``.npy``."""
    from pointprobe.data.ply import write_ply

    result = load_probe(probe_path)
    spec = encoder_from_probe(result.meta)
    key = result.meta.get("cache_key", {})
    cfg = extract_config_for_probe(spec, key.get("preprocessing", {}))
    dev = pick_device(device)
    model, rec = build_encoder(spec, dev)
    if spec.name != RAW and spec.checkpoint and rec.checkpoint_sha256 != key.get("checkpoint_sha256"):
        raise CheckpointError(f"{spec.checkpoint}: sha256 {rec.checkpoint_sha256[:12]} differs from the one "
                              f"the probe was trained on ({str(key.get('checkpoint_sha256'))[:12]})")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    failures: dict[str, str] = {}
    for s in scenes:
        try:
            scene = _read_any_scene(Path(s))
            feats = scene_features(model, scene, cfg, dev)
            pred = predict(result, torch.from_numpy(feats)).argmax(1).numpy()
            colors = labelled_ply_colors(pred, result.num_classes)
            vertex = {"x": scene.coord[:, 0], "y": scene.coord[:, 1], "z": scene.coord[:, 2],
                      "red": colors[:, 0], "green": colors[:, 1], "blue": colors[:, 2],
                      "label": pred.astype(np.int32)}
            write_ply(out_dir / f"{scene.name}.ply", vertex)
            np.save(out_dir / f"{scene.name}.labels.npy", pred.astype(np.int64))
            msg = f"{scene.name}: {len(pred)} points labelled -> {out_dir / (scene.name + '.ply')}"
            if scene.labelled and (scene.segment20 >= 0).any():
                conf = confusion_matrix(pred, scene.labels("segment20"), result.num_classes)
                msg += f" (mIoU {100 * segmentation_metrics(conf)['mIoU']:.1f} against its labels)"
            print(msg)
        except InputError as e:
            failures[s] = str(e)
    return failures
