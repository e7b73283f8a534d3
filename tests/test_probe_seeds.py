"""Seeds and spread in `pointprobe probe` / `videoprobe probe`, and test-set honesty (issue 19).

Numbers are checked against numpy: the std over seeds (ddof=1) of the per-seed values, and the
bootstrap interval re-implemented here from the stored per-scene confusion matrices / per-video
predictions with the same fixed seed.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from common.cache import CacheKey, CacheWriter
from common.errors import ConfigError
from pointprobe.probe import SegProbeConfig, run_probe
from videoprobe.probe import ProbeConfig, knn_defaults, run_probes, write_probe_report

D = 8


def _write(folder, split, scenes):
    key = CacheKey(encoder="sparseunet", checkpoint_sha256="random:0", config_hash="0" * 16, split=split)
    meta = {"label_set": "segment20", "encoder": {"label": "demo"}}
    with CacheWriter(folder / split, key, D, meta=meta) as w:
        for name, (f, y) in scenes.items():
            w.write(name, f, y)


@pytest.fixture()
def point_features(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "feat"
    centers = rng.normal(0, 1.0, (4, D)).astype(np.float32)
    for split, n in (("train", 6), ("val", 5)):
        scenes = {}
        for i in range(n):
            y = rng.integers(0, 4, 150)
            f = centers[y] + rng.normal(0, 0.9, (150, D)).astype(np.float32)
            scenes[f"scene{split[0]}{i:03d}_00"] = (f, y)
        _write(folder, split, scenes)
    return folder


def _point_cfg(features, out, **kw):
    cfg = SegProbeConfig(features=[str(features)], out=str(out), points_per_scene=40, scene_fraction=0.7,
                         **kw)
    cfg.probe.lrs, cfg.probe.wds, cfg.probe.epochs, cfg.probe.progress = [0.01, 0.1], [0.0], 3, False
    cfg.probe.val_fraction = 0.2
    return cfg


def _miou(conf):
    inter = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - inter
    sel = union > 0
    return float(np.mean(inter[sel] / union[sel]))


def test_point_seeds_spread_and_bootstrap_against_numpy(point_features, tmp_path):
    out = tmp_path / "probe"
    res = run_probe(_point_cfg(point_features, out, seeds=[0, 1, 2], n_boot=200, bootstrap_seed=7))
    rec = res["records"][0]
    per_seed = [p["mIoU"] for p in rec["per_seed"]]
    assert len(set(per_seed)) > 1  # the seeds really differ (subsets, held-out scenes, data order)
    assert rec["mIoU"] == pytest.approx(np.mean(per_seed), abs=1e-9)
    assert rec["spread"]["mIoU"]["std"] == pytest.approx(np.std(per_seed, ddof=1), abs=1e-9)
    # per-scene confusion matrices: summed they give each seed's mIoU; the bootstrap by hand
    npz = np.load(out / "scene_confusion.npz")
    conf = np.stack([npz[f"demo/seed{s}"] for s in (0, 1, 2)], axis=1)  # (scenes, seeds, C, C)
    for j in range(3):
        assert 100 * _miou(conf[:, j].sum(0)) == pytest.approx(per_seed[j], abs=1e-9)
    idx = np.random.default_rng(7).integers(0, conf.shape[0], size=(200, conf.shape[0]))
    boots = [np.mean([100 * _miou(conf[i][:, j].sum(0)) for j in range(3)]) for i in idx]
    lo, hi = np.percentile(boots, [2.5, 97.5])
    assert rec["spread"]["mIoU"]["ci"] == pytest.approx([lo, hi], abs=1e-9)
    # per-class spread
    iou = np.array([p["iou"] for p in rec["per_seed"]], dtype=float)  # (seeds, 20)
    assert rec["iou"][:4] == pytest.approx(iou[:, :4].mean(0), abs=1e-9)
    assert rec["iou_std"][:4] == pytest.approx(np.std(iou[:, :4], axis=0, ddof=1), abs=1e-9)
    per_class = json.loads((out / "per_class_iou.json").read_text())["rows"][0]
    assert per_class["demo std"] == pytest.approx(np.std(iou[:, 0], ddof=1), abs=1e-9)
    # tables: JSON numeric fields, markdown "mean ± std [lo, hi]"
    table = json.loads((out / "results.json").read_text())
    row = table["rows"][0]
    assert row["mIoU"] == pytest.approx(rec["mIoU"])
    assert row["mIoU std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert [row["mIoU ci_low"], row["mIoU ci_high"]] == pytest.approx([lo, hi])
    assert row["seeds"] == [0, 1, 2] and table["meta"]["std_ddof"] == 1
    assert table["meta"]["eval_class_histogram"][:4] == [int(v) for v in conf[:, 0].sum(0).sum(1)[:4]]
    md = (out / "results.md").read_text()
    assert f"{rec['mIoU']:.2f} ± {np.std(per_seed, ddof=1):.2f} [{lo:.2f}, {hi:.2f}]" in md
    assert (out / "probe_demo.pt").is_file() and (out / "probe_demo_seed2.pt").is_file()


def test_point_one_seed_list_is_the_single_run(point_features, tmp_path):
    a = run_probe(_point_cfg(point_features, tmp_path / "a", seed=1))["records"][0]
    b = run_probe(_point_cfg(point_features, tmp_path / "b", seeds=[1]))["records"][0]
    for m in ("mIoU", "mAcc", "allAcc"):
        assert a[m] == b[m]
    assert a["spread"]["mIoU"]["std"] is None
    assert a["iou"] == pytest.approx(b["iou"], nan_ok=True)


def test_point_refuses_selection_on_the_eval_split(point_features, tmp_path, caplog):
    cfg = _point_cfg(point_features, tmp_path / "p", train_split="val", eval_split="val")
    with pytest.raises(ConfigError, match="allow_select_on_test=true"):
        run_probe(cfg)
    cfg.allow_select_on_test = True
    with caplog.at_level("WARNING"):
        run_probe(cfg)
    assert "also the selection split" in caplog.text
    meta = json.loads((tmp_path / "p" / "results.json").read_text())["meta"]
    assert meta["eval_is_selection_split"] is True
    assert meta["selected_on"] == "held-out 0.2 of the 'val' scenes"


# ------------------------------------------------------------------------------------------- video
CLASSES = ["A", "B", "C"]


def _vcache(path, split, per_class, rng, dataset="synth"):
    key = CacheKey(encoder="videomae_vit_tiny", checkpoint_sha256="random:0", config_hash="1" * 16,
                   dataset=dataset, split=split)
    with CacheWriter(path, key, D, meta={"class_names": CLASSES}) as w:
        for c in range(3):
            for i in range(per_class):
                f = np.eye(D, dtype=np.float32)[c] + rng.normal(0, 0.7, (2, D)).astype(np.float32)
                w.write(f"v_{CLASSES[c]}_{i:02d}", f, np.full(2, c))


@pytest.fixture()
def video_caches(tmp_path):
    rng = np.random.default_rng(0)
    _vcache(tmp_path / "train", "train", 10, rng)
    _vcache(tmp_path / "test", "test", 8, rng)
    return tmp_path


def _video_cfg(caches, out, **kw):
    cfg = ProbeConfig(train_cache=str(caches / "train"), test_cache=str(caches / "test"), out=str(out),
                      probes=["linear", "knn"], knn=knn_defaults(ks=[5]), progress=False, **kw)
    cfg.linear.lrs, cfg.linear.wds = [0.001, 0.01, 0.1], [0.0]
    cfg.linear.epochs, cfg.linear.batch_size, cfg.linear.val_fraction = 4, 4, 0.3
    return cfg


def _video_metrics(labels, pred, top5):
    conf = np.zeros((3, 3))
    np.add.at(conf, (labels, pred), 1)
    present = conf.sum(1) > 0
    return {"top1": 100 * np.mean(pred == labels), "top5": 100 * np.mean(top5),
            "mean_class": 100 * np.mean(np.diag(conf)[present] / conf.sum(1)[present])}


def test_video_seeds_spread_and_bootstrap_against_numpy(video_caches, tmp_path):
    cfg = _video_cfg(video_caches, tmp_path / "probe", seeds=[0, 1, 2], n_boot=300, bootstrap_seed=4)
    outcome = run_probes(cfg)
    write_probe_report(cfg, outcome)
    lin = outcome["results"]["linear"]
    per_seed = [p["top1"] for p in lin["per_seed"]]
    assert lin["top1"] == pytest.approx(np.mean(per_seed), abs=1e-9)
    assert lin["spread"]["top1"]["std"] == pytest.approx(np.std(per_seed, ddof=1), abs=1e-9)
    pv = json.loads((tmp_path / "probe" / "per_video.json").read_text())["linear"]
    labels, pred, top5 = np.array(pv["labels"]), np.array(pv["pred"]), np.array(pv["top5"])
    for j in range(3):  # per-video predictions reproduce each seed's reported numbers
        assert _video_metrics(labels, pred[j], top5[j])["top1"] == pytest.approx(per_seed[j], abs=1e-9)
        assert _video_metrics(labels, pred[j], top5[j])["mean_class"] == pytest.approx(
            lin["per_seed"][j]["mean_class"], abs=1e-9)
    idx = np.random.default_rng(4).integers(0, len(labels), size=(300, len(labels)))
    for m in ("top1", "mean_class"):
        boots = [np.mean([_video_metrics(labels[i], pred[j][i], top5[j][i])[m] for j in range(3)])
                 for i in idx]
        assert lin["spread"][m]["ci"] == pytest.approx(list(np.percentile(boots, [2.5, 97.5])), abs=1e-9)
    knn = outcome["results"]["knn"]
    assert knn["seeds"] == [0] and knn["spread"]["top1"]["std"] is None  # deterministic: one run
    table = json.loads((tmp_path / "probe" / "probe.json").read_text())
    row = next(r for r in table["rows"] if r["probe"] == "linear")
    assert row["top1 std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert table["meta"]["test_class_histogram"] == [8, 8, 8]
    assert table["meta"]["eval_is_selection_split"] is False
    assert "±" in (tmp_path / "probe" / "probe.md").read_text()


def test_video_one_seed_list_is_the_single_run(video_caches, tmp_path):
    a = run_probes(_video_cfg(video_caches, tmp_path / "a", seed=2))["results"]
    b = run_probes(_video_cfg(video_caches, tmp_path / "b", seeds=[2]))["results"]
    for p in ("linear", "knn"):
        for m in ("top1", "top5", "mean_class"):
            assert a[p][m] == b[p][m]


def test_video_refuses_selection_on_the_test_split(video_caches, tmp_path):
    cfg = _video_cfg(video_caches, tmp_path / "p")
    cfg.train_cache = cfg.test_cache
    with pytest.raises(ConfigError, match="allow_select_on_test=true"):
        run_probes(cfg)
    cfg.allow_select_on_test = True
    assert run_probes(cfg)["selection"]["eval_is_selection_split"] is True


def test_video_caches_without_split_names_are_not_taken_for_one_split(tmp_path):
    rng = np.random.default_rng(1)
    _vcache(tmp_path / "tr", "", 4, rng, dataset="")
    _vcache(tmp_path / "te", "", 2, rng, dataset="")
    cfg = _video_cfg(tmp_path, tmp_path / "p")
    cfg.train_cache, cfg.test_cache, cfg.probes = str(tmp_path / "tr"), str(tmp_path / "te"), ["knn"]
    assert run_probes(cfg)["selection"]["eval_is_selection_split"] is False


def test_video_attentive_seeds_and_per_video_predictions(tmp_path):
    """The attentive probe's per-video predictions (for the bootstrap) reproduce its reported numbers."""
    rng = np.random.default_rng(2)
    for split, n in (("train", 6), ("test", 4)):
        key = CacheKey(encoder="videomae_vit_tiny", checkpoint_sha256="random:0", config_hash="1" * 16,
                       dataset="synth", split=split)
        with CacheWriter(tmp_path / split, key, D, meta={"class_names": CLASSES, "crops_per_clip": 1}) as w:
            for c in range(3):
                for i in range(n):
                    tok = np.eye(D, dtype=np.float32)[c] + rng.normal(0, 0.5, (2, 1, 2, 2, D))
                    tok = tok.astype(np.float32)
                    w.write(f"v_{c}_{i}", tok.mean((1, 2, 3)), np.full(2, c), tokens=tok)
    cfg = ProbeConfig(train_cache=str(tmp_path / "train"), test_cache=str(tmp_path / "test"),
                      out=str(tmp_path / "p"), probes=["attentive"], progress=False, seeds=[0, 1], n_boot=100)
    cfg.attentive.epochs, cfg.attentive.batch_size = 3, 4
    outcome = run_probes(cfg)
    att = outcome["results"]["attentive"]
    pv = outcome["per_video"]["attentive"]
    labels, pred = np.array(pv["labels"]), np.array(pv["pred"])
    per_seed = [p["top1"] for p in att["per_seed"]]
    for j in range(2):
        assert 100 * np.mean(pred[j] == labels) == pytest.approx(per_seed[j], abs=1e-9)
    assert att["spread"]["top1"]["std"] == pytest.approx(np.std(per_seed, ddof=1), abs=1e-9)


def test_training_on_a_test_split_is_refused(point_features, tmp_path):
    import shutil

    shutil.copytree(point_features / "train", point_features / "test")
    cfg = _point_cfg(point_features, tmp_path / "p", train_split="test", eval_split="val")
    with pytest.raises(ConfigError, match="train_split is 'test'"):
        run_probe(cfg)
    rng = np.random.default_rng(3)
    _vcache(tmp_path / "a", "test", 3, rng, dataset="ucf101")
    _vcache(tmp_path / "b", "val", 3, rng, dataset="ucf101")
    vcfg = _video_cfg(tmp_path, tmp_path / "v")
    vcfg.train_cache, vcfg.test_cache = str(tmp_path / "a"), str(tmp_path / "b")
    with pytest.raises(ConfigError, match="'test' split"):
        run_probes(vcfg)
