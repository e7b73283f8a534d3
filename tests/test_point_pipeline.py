"""End to end: synth -> preprocess -> extract (raw, random-init encoder) -> probe -> label; bad scenes."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from common.cache import FeatureCache
from pointprobe.cli import main

pytestmark = pytest.mark.slow

FAST_PROBE = ["probe.epochs=2", "probe.lrs=[0.01,0.03]", "probe.wds=[0.0]", "max_train_points=40000",
              "probe.batch_size=2048"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("scannet")
    assert main(["synth", "--out", str(root / "raw"), "--scenes", "4", "--seed", "3",
                 "--frames-per-scene", "0", "--no-progress"]) == 0
    assert main(["preprocess", "--raw", str(root / "raw"), "--out", str(root / "data")]) == 0
    return root


def test_extract_probe_label(dataset, tmp_path, capsys):
    data = dataset / "data"
    feats = {}
    small = ["encoder.name=sparseunet", "encoder.config={channels: [16, 32, 48], depths: [1, 1, 1]}"]
    for name, extra in (("raw", []), ("su", small)):
        out = tmp_path / name
        enc = [] if extra else ["encoder.name=raw"]
        assert main(["extract", f"data.root={data}", f"out={out}", *enc, *extra]) == 0
        feats[name] = out
        cache = FeatureCache(out / "train")
        item = cache.items()[0]
        arrays = cache[item]
        n = np.load(data / "train" / item / "coord.npy").shape[0]
        assert arrays["features"].shape[0] == n and arrays["labels"].shape == (n,)
        assert (out / "config.yaml").exists()
        assert cache.meta["encoder"]["checkpoint_sha256"] == ("none" if name == "raw" else "random:0")
    raw = FeatureCache(feats["raw"] / "train")
    assert raw.feature_dim == 9
    # extraction again is a no-op (every scene cached) and keeps the files
    before = sorted(p.stat().st_mtime_ns for p in (feats["raw"] / "train").rglob("*.npy"))
    assert main(["extract", f"data.root={data}", f"out={feats['raw']}", "encoder.name=raw"]) == 0
    assert sorted(p.stat().st_mtime_ns for p in (feats["raw"] / "train").rglob("*.npy")) == before

    probe_out = tmp_path / "probe"
    assert main(["probe", f"features=[{feats['raw']},{feats['su']}]", f"out={probe_out}", *FAST_PROBE]) == 0
    res = json.loads((probe_out / "results.json").read_text())
    assert [r["encoder"] for r in res["rows"]] == ["raw", "sparseunet (random init)"]
    for r in res["rows"]:
        assert 0.0 <= r["mIoU"] <= 100.0 and r["allAcc"] > 5.0
    assert res["meta"]["encoders"][0]["checkpoint_sha256"] == "none"
    assert (probe_out / "per_class_iou.png").stat().st_size > 1000
    assert (probe_out / "config.yaml").exists()
    probes = sorted(probe_out.glob("probe_*.pt"))
    assert len(probes) == 2

    # a trained probe labels a scene: PLY with one class colour per point
    val_scene = next((data / "val").iterdir())
    lab_out = tmp_path / "labels"
    assert main(["label", "--probe", str(probes[-1]), "--scene", str(val_scene), "--out", str(lab_out)]) == 0
    import open3d as o3d

    pcd = o3d.io.read_point_cloud(str(lab_out / f"{val_scene.name}.ply"))
    pred = np.load(lab_out / f"{val_scene.name}.labels.npy")
    assert len(pcd.points) == pred.shape[0] == np.load(val_scene / "coord.npy").shape[0]
    assert pred.min() >= 0 and pred.max() < 20


def test_bad_scenes_reported_and_cache_kept(dataset, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(dataset / "data", data)
    train = sorted((data / "train").iterdir())
    out = tmp_path / "raw"
    # first run: everything fine
    assert main(["extract", f"data.root={data}", f"out={out}", "encoder.name=raw"]) == 0
    # add a scene with NaN coordinates and one whose labels do not match its points
    bad_nan = data / "train" / "scene9000_00"
    shutil.copytree(train[0], bad_nan)
    coord = np.load(bad_nan / "coord.npy")
    coord[5] = np.nan
    np.save(bad_nan / "coord.npy", coord)
    bad_len = data / "train" / "scene9001_00"
    shutil.copytree(train[0], bad_len)
    np.save(bad_len / "segment20.npy", np.load(bad_len / "segment20.npy")[:-7])
    capsys.readouterr()
    assert main(["extract", f"data.root={data}", f"out={out}", "encoder.name=raw"]) == 1
    err = capsys.readouterr().err
    assert "scene9000_00" in err and "NaN" in err
    assert "scene9001_00" in err
    cache = FeatureCache(out / "train")
    assert sorted(cache.items()) == sorted(p.name for p in train)  # nothing lost, bad ones not added


def test_wrong_config_key_is_one_line(dataset, tmp_path, capsys):
    assert main(["extract", f"data.root={dataset / 'data'}", "encoder.nmae=raw"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "encoder.nmae" in err and "encoder.name" in err


def test_cache_from_other_encoder_refused(dataset, tmp_path, capsys):
    out = tmp_path / "f"
    assert main(["extract", f"data.root={dataset / 'data'}", f"out={out}", "encoder.name=raw",
                 "data.splits=[val]"]) == 0
    rc = main(["extract", f"data.root={dataset / 'data'}", f"out={out}", "encoder.name=sparseunet",
               "encoder.config={channels: [16, 32], depths: [1, 1]}", "data.splits=[val]"])
    assert rc == 2
    assert "encoder" in capsys.readouterr().err


def test_tta_features_are_the_mean_over_rotated_views(dataset):
    import torch

    from pointprobe.data.scannet import load_scene
    from pointprobe.extract import ExtractConfig, PointEncoderConfig, _augment, build_encoder, scene_features
    from pointprobe.models import encode_points

    scene_dir = next((dataset / "data" / "val").iterdir())
    scene = load_scene(scene_dir)
    keep = np.arange(0, len(scene.coord), 8)  # a lighter scene
    for key in ("coord", "color", "normal", "segment20", "segment200", "instance"):
        setattr(scene, key, getattr(scene, key)[keep])
    spec = PointEncoderConfig(name="sparseunet", config={"channels": [8, 16], "depths": [1, 1]})
    model, _ = build_encoder(spec, torch.device("cpu"))
    cfg = ExtractConfig(encoder=spec, tta=2)
    got = scene_features(model, scene, cfg, torch.device("cpu"))
    ref0 = encode_points(model, scene.coord, scene.color, scene.normal).numpy()
    ref1 = encode_points(model, _augment(scene.coord, 90.0, False), scene.color,
                         _augment(scene.normal, 90.0, False)).numpy()
    np.testing.assert_allclose(got, (ref0 + ref1) / 2, rtol=1e-5, atol=1e-5)
    assert not np.allclose(ref0, ref1)  # the second view is a different view
