"""Distilling lifted features into a 3D encoder (training, export, exact resume) and unsupervised
clustering (cosine k-means, STEGO-style head, Hungarian mIoU, pictures)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common.cache import CacheKey, CacheWriter, FeatureCache
from common.config import load_config
from common.errors import ConfigError

N_CLASSES = 20


# ------------------------------------------------------------------------------------------ clustering
def _separable_caches(root: Path, n_scenes: int = 3, n_points: int = 600, seed: int = 0) -> Path:
    """Scenes whose features are one-hot of the class (+ noise), with 10 % unseen points carrying a
    wrong feature; preprocessed scenes (coordinates) under root/pre for the pictures."""
    from pointprobe.data.scannet import Scene, save_scene

    rng = np.random.default_rng(seed)
    feats_dir = root / "feats"
    key = CacheKey("test/onehot", "none", "0", {}, "synthetic", "val")
    w = CacheWriter(feats_dir / "val", key, N_CLASSES, meta={
        "encoder": {"name": "onehot", "label": "one-hot"}, "label_set": "segment20",
        "config": {"data": {"root": str(root / "pre")}}})
    for s in range(n_scenes):
        lab = rng.integers(0, N_CLASSES, n_points)
        lab[:N_CLASSES] = np.arange(N_CLASSES)  # every class in every scene
        lab[rng.random(n_points) < 0.05] = -1  # some unlabelled points
        f = np.eye(N_CLASSES)[np.maximum(lab, 0)] + rng.normal(0, 0.05, (n_points, N_CLASSES))
        vis = np.ones(n_points, np.int32) * 2
        unseen = rng.random(n_points) < 0.1
        unseen[:N_CLASSES] = False
        vis[unseen] = 0
        f[unseen] = np.eye(N_CLASSES)[(np.maximum(lab[unseen], 0) + 1) % N_CLASSES]  # misleading
        name = f"scene{s:04d}_00"
        w.write(name, f.astype(np.float32), lab, visible_count=vis)
        coord = rng.uniform(0, 3, (n_points, 3)).astype(np.float32)
        save_scene(Scene(name, coord, rng.integers(0, 255, (n_points, 3)).astype(np.uint8),
                         np.tile([0, 0, 1.0], (n_points, 1)).astype(np.float32), lab, lab, lab),
                   root / "pre" / "val" / name)
    w.close()
    return feats_dir


def test_cluster_separable_features_score_100(tmp_path, monkeypatch):
    from pointprobe.cli import main

    monkeypatch.setenv("PROBESUITE_NO_RENDER", "1")
    feats = _separable_caches(tmp_path)
    out = tmp_path / "cluster"
    assert main(["cluster", "--config", "configs/point/cluster.yaml", f"features=[{feats}]", f"out={out}",
                 "viz_scenes=1", "device=cpu"]) == 0
    res = json.loads((out / "results.json").read_text())
    row = res["rows"][0]
    assert row["mIoU"] == pytest.approx(100.0) and row["allAcc"] == pytest.approx(100.0)
    assert row["k"] == N_CLASSES and 0.85 < row["coverage"] < 0.95  # unseen points left out
    assert (out / "config.yaml").is_file() and (out / "per_class_iou.md").is_file()
    # pictures: cluster-coloured PLY whose cluster ids map to the true classes, and the panels PNG
    from pointprobe.data.ply import read_ply

    d = out / "one-hot" / "scene0000_00"
    assert (d / "panels.png").is_file() and (d / "matched.ply").is_file()
    ply = read_ply(d / "clusters.ply")
    cid = np.asarray(ply.vertex["cluster"])
    vis = FeatureCache(feats / "val")["scene0000_00"]["visible_count"]
    lab = FeatureCache(feats / "val")["scene0000_00"]["labels"]
    assert (cid[vis == 0] == -1).all()
    mapping = np.asarray(json.loads((out / "details.json").read_text())["records"][0]["mapping"])
    ok = (vis > 0) & (lab >= 0)
    np.testing.assert_array_equal(mapping[cid[ok]], lab[ok])
    # with the unseen points included their misleading features cost accuracy
    out2 = tmp_path / "cluster_all"
    assert main(["cluster", f"features=[{feats}]", f"out={out2}", "visible_only=false", "viz_scenes=0",
                 "device=cpu"]) == 0
    row2 = json.loads((out2 / "results.json").read_text())["rows"][0]
    assert row2["mIoU"] < 95 and row2["coverage"] == pytest.approx(1.0)


def test_cluster_with_stego_head_on_separable_features(tmp_path):
    from pointprobe.lift.cluster import ClusterConfig, run_cluster

    feats = _separable_caches(tmp_path, seed=1)
    cfg = load_config(ClusterConfig, None, [f"features=[{feats}]", f"out={tmp_path / 'c'}", "viz_scenes=0",
                                            "stego.enabled=true", "stego.steps=200", "stego.dim=32",
                                            "stego.points_per_scene=128", "stego.lr=0.003",
                                            "device=cpu"])
    res = run_cluster(cfg, progress=False)
    rec = res["records"][0]
    assert rec["head"] == "stego 32"
    first, last = rec["stego_loss_first_last"]
    assert last < first
    assert rec["mIoU"] == pytest.approx(100.0)


def test_stego_loss_prefers_projections_that_follow_feature_correlations():
    from pointprobe.lift.cluster import stego_correlation_loss

    g = torch.Generator().manual_seed(0)
    cls = torch.randint(0, 4, (200,), generator=g)
    f = torch.eye(4)[cls] + 0.05 * torch.randn(200, 4, generator=g)
    good = torch.eye(4)[cls] * 3.0  # same class -> same direction
    bad = torch.randn(200, 4, generator=g)
    assert stego_correlation_loss(f, f, good, good, 0.1) < stego_correlation_loss(f, f, bad, bad, 0.1)
    # the shift decides what is pulled together: with a shift above every correlation all pairs repel
    assert stego_correlation_loss(f, f, good, good, 5.0) > 0


def test_cluster_config_errors(tmp_path):
    from pointprobe.lift.cluster import ClusterConfig, run_cluster

    with pytest.raises(ConfigError, match="features"):
        run_cluster(ClusterConfig(out=str(tmp_path)))
    with pytest.raises(ConfigError, match="names"):
        run_cluster(ClusterConfig(features=["a"], names=["x", "y"], out=str(tmp_path)))


# --------------------------------------------------------------------------------------------- distill
@pytest.fixture(scope="module")
def lifted(tmp_path_factory) -> tuple[Path, Path, Path]:
    """3 generated scenes (train 1, val 1, test 1; 4 frames at 160x120), lifted with the rgb encoder."""
    from pointprobe.data.preprocess import preprocess_dataset
    from pointprobe.data.synth import generate_dataset
    from pointprobe.lift.lift import LiftConfig, run_lift

    root = tmp_path_factory.mktemp("distill")
    generate_dataset(root / "raw", 3, seed=2, frames_per_scene=4, image_size=(160, 120), progress=False)
    preprocess_dataset(root / "raw", root / "pre", workers=1, progress=False, log=lambda *a, **k: None)
    cfg = load_config(LiftConfig, None, [f"data.raw={root / 'raw'}", f"data.root={root / 'pre'}",
                                         f"out={root / 'lift'}", "image_encoder.name=rgb",
                                         "fusion.frame_stride=1",
                                         "fusion.image_size=[160,120]", "progress=false", "device=cpu",
                                         "data.splits=[train,val]", "dtype=float32"])
    run_lift(cfg)
    return root / "raw", root / "pre", root / "lift"


def _distill_args(pre: Path, lift: Path, out: Path, epochs: int) -> list[str]:
    return [f"data.lifted={lift}", f"data.root={pre}", f"out={out}", f"train.epochs={epochs}",
            "model.backbone_config={channels: [8, 16], depths: [1, 1]}", "train.max_points=6000",
            "train.batch_scenes=1", "train.progress=false", "train.device=cpu", "train.lr=0.01",
            "train.val_every=0", "predict_splits=[val]"]


@pytest.mark.slow
def test_distill_trains_exports_and_resumes_exactly(lifted, tmp_path):
    from pointprobe.lift.distill import DistillConfig, run_distill
    from pointprobe.models import encode_points, load_encoder

    _, pre, lift = lifted
    full = tmp_path / "full"
    raw = ["train.center_targets=false"]  # plain cosine to the lifted features: learns fast
    res = run_distill(load_config(DistillConfig, None, _distill_args(pre, lift, full, 3) + raw))
    hist = res["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert hist[-1]["loss"] < hist[0]["loss"] and 0 < hist[-1]["val_cosine"] <= 1
    assert "val_cosine" not in hist[0]  # val_every=0: validation after the last epoch only
    assert "val_cosine_mean_baseline" in hist[-1] and "val_cosine_centred" in hist[-1]
    # exact resume: 2 epochs, then the same command with 3 epochs continues from out/last.pth
    part = tmp_path / "part"
    no_export = ["export_predictions=false"] + raw
    run_distill(load_config(DistillConfig, None, _distill_args(pre, lift, part, 2) + no_export))
    res2 = run_distill(load_config(DistillConfig, None, _distill_args(pre, lift, part, 3) + no_export))
    assert [h["epoch"] for h in res2["history"]] == [1, 2, 3]
    a = torch.load(full / "encoder.pth", weights_only=True)["state_dict"]
    b = torch.load(part / "encoder.pth", weights_only=True)["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    # changed training settings are refused on resume
    with pytest.raises(ConfigError, match="different training settings"):
        bad_lr = ["train.lr=0.5"]
        run_distill(load_config(DistillConfig, None, _distill_args(pre, lift, part, 4) + raw + bad_lr))
    # the exported encoder loads with load_encoder; with the head it reproduces the predicted caches,
    # with plain and with centred targets (prediction = mean target + direction x mean centred norm)
    cen = tmp_path / "centred"
    res_c = run_distill(load_config(DistillConfig, None, _distill_args(pre, lift, cen, 1)))
    assert "val_cosine_centred" in res_c["history"][-1]
    from pointprobe.data.scannet import load_scene

    lift_val = FeatureCache(lift / "val")
    for out, centred in ((full, False), (cen, True)):
        enc = load_encoder(out / "encoder.pth")
        head = torch.load(out / "head.pth", weights_only=True)
        assert (head["target_radius"] > 0) == centred
        pred = FeatureCache(out / "predicted" / "val")
        assert pred.items() == lift_val.items() and pred.meta["label_set"] == "segment20"
        for item in pred.items():
            s = load_scene(pre / "val" / item)
            p = encode_points(enc, s.coord, s.color, s.normal) @ head["weight"].T + head["bias"]
            if centred:
                p = torch.nn.functional.normalize(p, dim=1) * head["target_radius"] + head["target_offset"]
            np.testing.assert_allclose(np.asarray(pred[item]["features"], np.float32), p.numpy(), atol=2e-2)
            np.testing.assert_array_equal(pred[item]["labels"], s.segment20)
            np.testing.assert_array_equal(pred[item]["lifted_visible_count"], lift_val[item]["visible_count"])
    enc = load_encoder(full / "encoder.pth")
    # the extract command probes the distilled encoder like any checkpoint
    from pointprobe.cli import main

    assert main(["extract", "--config", "configs/point/extract.yaml", f"data.root={pre}",
                 f"encoder.checkpoint={full / 'encoder.pth'}", f"out={tmp_path / 'feat'}",
                 "data.splits=[val]",
                 "device=cpu", "dtype=float32"]) == 0
    ext = FeatureCache(tmp_path / "feat" / "val")
    assert ext.feature_dim == enc.feature_dim(None) == 24


def test_distill_errors(lifted, tmp_path):
    from pointprobe.lift.distill import DistillConfig, run_distill

    _, pre, lift = lifted
    with pytest.raises(ConfigError, match="train.epochs"):
        run_distill(load_config(DistillConfig, None, _distill_args(pre, lift, tmp_path, 0)))
    from common.errors import InputError

    with pytest.raises(InputError, match="no lifted-feature cache"):
        run_distill(load_config(DistillConfig, None, _distill_args(pre, tmp_path / "nope", tmp_path, 1)))
