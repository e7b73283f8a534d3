"""Distilling lifted features into a 3D encoder (training, export, exact resume) and unsupervised
clustering (cosine k-means, STEGO-style head, Hungarian mIoU, pictures)."""

from __future__ import annotations

import json
import os
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
    from pointprobe.data.scannet_preprocess import preprocess_dataset
    from pointprobe.lift.lift import LiftConfig, run_lift
    from pointprobe.synth import generate_dataset

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


class _FeatureBackbone(torch.nn.Module):
    """A stand-in backbone: ``encode`` returns the given feature rows (``feature_dim`` 64)."""

    def feature_dim(self, levels=None) -> int:
        return 64

    def encode(self, point, levels=None):
        return point


def _common_shift(head_norm: str) -> float:
    """One AdamW step of a distill student on scene A; on scene B (other points, the same large common
    feature component as every post-activation feature has), the change of the mean prediction over the
    mean change of each point's prediction around it."""
    from pointprobe.lift.distill import LiftStudent, cosine_loss

    g = torch.Generator().manual_seed(0)
    common = 5 + torch.rand(64, generator=g)  # features of a GELU / LayerNorm network: not centred
    feat_a, feat_b = (common + torch.randn(n, 64, generator=g) for n in (3000, 2000))
    target_a = torch.randn(3000, 8, generator=g) + torch.randn(8, generator=g)  # with a scene offset
    torch.manual_seed(0)
    model = LiftStudent(_FeatureBackbone(), None, 8, head_norm=head_norm)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    with torch.no_grad():
        for _ in range(50):  # the norm's running statistics settle (as they do over training)
            model(feat_a)
    model.eval()
    with torch.no_grad():
        before = model(feat_b)
    model.train()
    loss = cosine_loss(model(feat_a), target_a)
    opt.zero_grad()
    loss.backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        delta = model(feat_b) - before
    mean = delta.mean(0)
    return float(mean.norm() / (delta - mean).norm(dim=1).mean())


def test_distill_projection_step_does_not_move_every_prediction_alike():
    """The projection reads standardised features (``model.head_norm=bn``, the default): a step on one
    scene then changes predictions point by point, not by one offset shared by every point of every
    scene (with the raw features it does: the centred validation cosine swung by 0.2 between epochs)."""
    from pointprobe.lift.distill import LiftStudent

    assert _common_shift("none") > 10
    assert _common_shift("bn") < 1
    # the exported head (head.pth) is one linear map: the norm folded into it equals the eval model
    model = LiftStudent(_FeatureBackbone(), None, 8)
    x = 3 + torch.randn(500, 64)
    model.train()
    for _ in range(20):
        model(x)
    model.eval()
    w, b = model.folded_head()
    with torch.no_grad():
        torch.testing.assert_close(x @ w.T + b, model(x), atol=1e-4, rtol=1e-4)


def test_distill_errors(lifted, tmp_path):
    from pointprobe.lift.distill import DistillConfig, run_distill

    _, pre, lift = lifted
    with pytest.raises(ConfigError, match="train.epochs"):
        run_distill(load_config(DistillConfig, None, _distill_args(pre, lift, tmp_path, 0)))
    from common.errors import InputError

    with pytest.raises(InputError, match="no lifted-feature cache"):
        run_distill(load_config(DistillConfig, None, _distill_args(pre, tmp_path / "nope", tmp_path, 1)))


def _two_scene_split(pre: Path, lift: Path, dst: Path) -> tuple[Path, Path]:
    """A copy of the fixture's lifted train + val scenes as one 2-scene train split (2 steps an epoch)."""
    src = [FeatureCache(lift / s) for s in ("train", "val")]
    w = CacheWriter(dst / "lift" / "train", src[0].key, src[0].feature_dim, meta=src[0].meta)
    for c, split in zip(src, ("train", "val")):
        for item in c.items():
            arr = c.load(item, c.arrays(item))
            w.write(item, arr.pop("features"), arr.pop("labels", None), **arr)
            (dst / "pre" / "train").mkdir(parents=True, exist_ok=True)
            (dst / "pre" / "train" / item).symlink_to(pre / split / item)
    w.close()
    return dst / "pre", dst / "lift"


@pytest.fixture
def one_thread():
    """``train.threads=1`` sets torch's process-wide thread count: restored afterwards."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_distill_sigterm_mid_epoch_then_resume_is_bit_identical(lifted, tmp_path, monkeypatch, capsys,
                                                                one_thread):
    """SIGTERM during step 3 of 4 (epoch 2 of 2, 2 steps an epoch): the step finishes, last.pth holds the
    position inside the epoch, exit 3; rerunning the same command ends with the weights, head and history
    of an uninterrupted run, bit for bit. One thread: with two, CPU float sums are not reproducible
    from one run to the next in the same process (measured on pretrain: 1.5e-8 between two identical
    runs), which has nothing to do with resuming."""
    import signal

    from pointprobe.cli import main
    from pointprobe.lift.distill import Distiller

    _, pre, lift = lifted
    pre2, lift2 = _two_scene_split(pre, lift, tmp_path / "two")

    def args(out: Path) -> list[str]:
        return ["distill", *_distill_args(pre2, lift2, out, 2), "data.val_split=", "export_predictions=false",
                "train.warmup_epochs=0.5", "train.threads=1"]

    assert main(args(tmp_path / "ref")) == 0
    real = Distiller._batch

    def batch(self, ids, rng):  # the signal arrives while step 3 is being prepared
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, ids, rng)

    monkeypatch.setattr(Distiller, "_batch", batch)
    out = tmp_path / "run"
    assert main(args(out)) == 3
    assert "interrupted at step 3 (SIGTERM), resumable: rerun the same command" in capsys.readouterr().err
    st = torch.load(out / "last.pth", weights_only=True)
    assert (st["epoch"], st["step"], st["batch_in_epoch"]) == (1, 3, 1) and st["epoch_rng"]
    assert not (out / "encoder.pth").exists()
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored
    assert main(args(out)) == 0
    for name in ("encoder.pth", "head.pth"):
        a = torch.load(tmp_path / "ref" / name, weights_only=True)
        b = torch.load(out / name, weights_only=True)
        if name == "encoder.pth":
            a, b = a["state_dict"], b["state_dict"]
        for k, v in a.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, b[k]), f"{name}:{k}"
    ref_hist = json.loads((tmp_path / "ref" / "history.json").read_text())
    assert json.loads((out / "history.json").read_text()) == ref_hist and len(ref_hist) == 2
