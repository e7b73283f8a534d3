"""Point feature storage per split: labelled subsample of the training scenes, nothing for ``none``."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from common.cache import FeatureCache
from common.errors import CacheError, ConfigError
from pointprobe.extract import (
    ExtractConfig,
    PointDataConfig,
    extract,
    points_per_scene,
    scene_seed,
    subsample_rows,
)
from pointprobe.models.registry import PointEncoderConfig
from tools.bench_scale_points import room_scene, write_scene


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("rooms")
    for i in range(6):
        write_scene(root / ("val" if i < 2 else "train") / f"scene{i:04d}_00", room_scene(3000 + 500 * i, i))
    return root


def _cfg(data, out, **kw) -> ExtractConfig:
    return ExtractConfig(data=PointDataConfig(root=str(data)), encoder=PointEncoderConfig(name="raw"),
                         out=str(out), **kw)


def test_subsample_rows_deterministic_labelled_and_balanced():
    rng = np.random.default_rng(0)
    y = rng.choice([0, 1, 1, 1, 1, 1, 2, -1], size=5000)
    a = subsample_rows(y, 300, seed=7)
    assert np.array_equal(a, subsample_rows(y, 300, seed=7))
    assert not np.array_equal(a, subsample_rows(y, 300, seed=8))
    assert len(a) == 300 and np.all(np.diff(a) > 0) and (y[a] >= 0).all()
    bal = subsample_rows(y, 300, seed=7, class_balanced=True)
    assert len(bal) == 300 and (y[bal] >= 0).all()
    counts = np.bincount(y[bal], minlength=3)
    assert counts.max() - counts.min() <= 1  # every class has enough points: equal shares
    few = np.array([0] * 10 + [1] * 1000 + [2] * 1000)
    c = np.bincount(few[subsample_rows(few, 300, seed=0, class_balanced=True)], minlength=3)
    # a rare class passes its share on
    assert c[0] == 10 and c.sum() == 300 and abs(int(c[1]) - int(c[2])) <= 1
    small = np.array([-1, 3, -1, 4])
    assert subsample_rows(small, 10, seed=0).tolist() == [1, 3]  # fewer labelled points than k: all of them
    assert scene_seed(0, "scene0000_00") == scene_seed(0, "scene0000_00") != scene_seed(1, "scene0000_00")


def test_points_per_scene_default_from_max_train_points():
    assert points_per_scene(ExtractConfig(max_train_points=2_000_000), 1201) == 1666
    assert points_per_scene(ExtractConfig(points_per_scene=50), 1201) == 50
    with pytest.raises(ConfigError, match="points_per_scene"):
        points_per_scene(ExtractConfig(points_per_scene=0, max_train_points=0), 3)


def test_subsampled_train_split_aligned_and_recorded(data, tmp_path):
    out = tmp_path / "f"
    cfg = _cfg(data, out, storage={"train": "subsample", "val": "none"}, max_train_points=2000)
    assert extract(cfg, progress=False) == {"train": {}}
    assert not (out / "val").exists()  # storage none: nothing written for val
    cache = FeatureCache(out / "train")
    k = points_per_scene(cfg, 4)
    assert k == 500
    st = cache.meta["storage"]
    assert st["mode"] == "subsample" and st["points_per_scene"] == 500 and st["seed"] == 0
    assert set(st["bytes_per_scene"]) == set(cache.items())
    assert cache.key.preprocessing["storage"]["points_per_scene"] == 500
    from pointprobe.extract import raw_features

    for it in cache.items():
        arr = cache.load(it, arrays=None)
        assert st["bytes_per_scene"][it] == cache.item_bytes(it) > 500 * 9 * 2
        folder = data / "train" / it
        y = np.load(folder / "segment20.npy")
        idx = arr["index"]
        assert len(idx) == 500 and np.array_equal(arr["labels"], y[idx]) and (arr["labels"] >= 0).all()
        full = raw_features(np.load(folder / "coord.npy"), np.load(folder / "color.npy"),
                            np.load(folder / "normal.npy"))
        np.testing.assert_array_equal(arr["features"], full[idx].astype(np.float16))
        assert np.array_equal(idx, subsample_rows(y, 500, scene_seed(0, it)))
    # a second run draws the same subsample (the cache is complete: nothing rewritten)
    out2 = tmp_path / "g"
    extract(_cfg(data, out2, storage={"train": "subsample", "val": "none"}, max_train_points=2000),
            progress=False)
    c2 = FeatureCache(out2 / "train")
    for it in cache.items():
        a, b = c2.load(it, arrays=["index"]), cache.load(it, arrays=["index"])
        assert np.array_equal(a["index"], b["index"])
    # the same folder with another subsample size is refused (the mode is in the key)
    with pytest.raises(CacheError, match="storage|preprocessing"):
        extract(_cfg(data, out, storage={"train": "subsample", "val": "none"}, points_per_scene=100),
                progress=False)


def test_full_is_the_default_and_records_bytes(data, tmp_path):
    out = tmp_path / "f"
    extract(_cfg(data, out), progress=False)
    cache = FeatureCache(out / "val")
    assert cache.meta["storage"]["mode"] == "full" and "storage" not in cache.key.preprocessing
    it = cache.items()[0]
    assert cache.n(it) == np.load(data / "val" / it / "coord.npy").shape[0]
    assert cache.meta["storage"]["bytes_per_scene"][it] == cache.item_bytes(it)


def test_unknown_storage_mode_or_split_refused(data, tmp_path):
    with pytest.raises(ConfigError, match="storage.train"):
        extract(_cfg(data, tmp_path / "x", storage={"train": "voxels"}), progress=False)
    with pytest.raises(ConfigError, match="storage.test"):
        extract(_cfg(data, tmp_path / "x", storage={"test": "none"}), progress=False)
    assert not (tmp_path / "x").exists()


def test_probe_trains_on_subsampled_cache(data, tmp_path):
    from pointprobe.probe import SegProbeConfig, run_probe

    out = tmp_path / "f"
    extract(_cfg(data, out, storage={"train": "subsample"}, points_per_scene=400, class_balanced=True),
            progress=False)
    cfg = SegProbeConfig(features=[str(out)], out=str(tmp_path / "p"), n_boot=10)
    cfg.probe.epochs = 2
    cfg.probe.lrs = [0.01]
    cfg.probe.wds = [0.0]
    res = run_probe(cfg)
    rec = res["records"][0]
    assert rec["train_points"] == 4 * 400 and rec["train_scenes"] == 4
    assert rec["allAcc"] > 20.0  # floor / wall / furniture colours are separable by the raw features


def test_extract_dry_run_writes_nothing(data, tmp_path, capsys):
    from pointprobe.cli import main

    bad = tmp_path / "data"
    shutil.copytree(data, bad)
    (bad / "train" / "scene0003_00" / "color.npy").unlink()
    np.save(bad / "train" / "scene0004_00" / "normal.npy", np.zeros((7, 3), np.float32))
    out = tmp_path / "out"
    rc = main(["extract", "--dry-run", f"data.root={bad}", f"out={out}", "encoder.name=raw",
               "storage={train: subsample, val: none}", "points_per_scene=100"])
    text = capsys.readouterr().out
    assert rc == 1 and not out.exists()  # scenes would fail; nothing written
    assert "[train] storage subsample: 4 scenes" in text and "2 would fail" in text
    assert "scene0003_00" in text and "color.npy: file not found" in text
    assert "scene0004_00" in text and "normal.npy: shape (7, 3)" in text
    assert "[val] storage none: 2 scenes" in text and "points/s on this machine" in text
    # 2 readable training scenes x 100 points x (9 float16 + int64 label + int64 index)
    assert "cache about 6.8 kB" in text
    from pointprobe.extract import dry_run

    rep = dry_run(_cfg(data, out, storage={"train": "subsample", "val": "none"}, points_per_scene=100))
    assert rep["splits"]["train"]["cache_bytes"] == 4 * 100 * (9 * 2 + 16) and not out.exists()
    assert rep["splits"]["val"]["cache_bytes"] == 0 and rep["splits"]["val"]["seconds"] == 0.0


def test_one_view_features_are_not_copied(monkeypatch):
    """With one view the encoded array is returned as is: no per-element pass over (N, D) float16
    (numpy's float16 arithmetic is emulated: dividing a ScanNet-sized scene by 1 took seconds)."""
    import torch

    import pointprobe.models as models
    from pointprobe.extract import scene_features

    encoded = torch.zeros((50, 4), dtype=torch.float16)
    monkeypatch.setattr(models, "encode_points", lambda *a, **k: encoded)
    scene = type("S", (), {"coord": np.zeros((50, 3), np.float32), "color": np.zeros((50, 3), np.uint8),
                           "normal": np.zeros((50, 3), np.float32), "name": "s"})()
    out = scene_features(object(), scene, ExtractConfig(), torch.device("cpu"))
    assert out.dtype == np.float16 and np.shares_memory(out, encoded.numpy())


def test_bench_generator_and_extrapolation(tmp_path):
    from tools.bench_scale_points import extrapolate, generate, scene_sizes

    sizes = scene_sizes(200, seed=1)
    assert sizes.min() >= 20_000 and sizes.max() <= 550_000 and 8e4 < np.median(sizes) < 1.6e5
    pts = generate(tmp_path, 4, seed=2, sizes=np.array([900, 1000, 1100, 1200]))
    assert sorted(pts) == ["train/scene0001_00", "train/scene0002_00", "train/scene0003_00",
                           "val/scene0000_00"]
    y = np.load(tmp_path / "val" / "scene0000_00" / "segment20.npy")
    assert y.shape == (900,) and set(np.unique(y)) <= set(range(-1, 20)) and {0, 1} <= set(y.tolist())
    rows = [{"scenes": n, "t": 3.0 * n ** 1.5} for n in (10, 20, 40)]
    assert extrapolate(rows, "t", 160) == pytest.approx(3.0 * 160 ** 1.5, rel=1e-9)


@pytest.mark.parametrize("sampling,max_points", [("canonical", None), ("canonical", 1500), ("first", None),
                                                 ("test", None)])
def test_encode_points_rows_equal_the_full_rows(sampling, max_points):
    """``rows=``: the kept points' features are those rows of the full result, bit for bit (one pass,
    spatial chunks, and test-mode passes), in the order given."""
    import torch

    from pointprobe.models.encode import encode_points
    from tools.bench_scale_points import _randproj_class

    torch.manual_seed(0)
    model = _randproj_class()(out_dim=48)
    s = room_scene(6000, 3)
    kw = dict(levels=None, device="cpu", max_points=max_points, sampling=sampling, out_dtype=torch.float16)
    full = encode_points(model, s["coord"], s["color"], s["normal"], **kw)
    rows = np.array([5999, 0, 17, 17, 3000, 4242], dtype=np.int64)
    part = encode_points(model, s["coord"], s["color"], s["normal"], rows=rows, **kw)
    assert part.shape == (len(rows), 48) and part.dtype == torch.float16
    assert torch.equal(part, full[torch.from_numpy(rows)])
    with pytest.raises(Exception, match="rows must index"):
        encode_points(model, s["coord"], s["color"], s["normal"], rows=np.array([6000]), **kw)


def test_subsampled_extract_gathers_kept_rows_only(data, tmp_path, monkeypatch):
    """A subsampled split asks the encoder path for the kept rows only (not an (N, D) array that is then
    indexed), and what is stored equals those rows of the full features."""
    import torch

    import pointprobe.models as models
    from pointprobe.models.encode import encode_points
    from tools.bench_scale_points import register_randproj

    register_randproj()
    asked: list[int] = []

    def spy(*a, rows=None, **k):
        asked.append(-1 if rows is None else len(rows))
        return encode_points(*a, rows=rows, **k)

    monkeypatch.setattr(models, "encode_points", spy)
    cfg = ExtractConfig(data=PointDataConfig(root=str(data)), encoder=PointEncoderConfig(name="randproj"),
                        out=str(tmp_path / "f"), storage={"train": "subsample", "val": "none"},
                        points_per_scene=64, device="cpu")
    extract(cfg, progress=False)
    assert asked == [64] * 4
    cache = FeatureCache(tmp_path / "f" / "train")
    from pointprobe.data.scannet import load_scene
    from pointprobe.models.registry import build_encoder

    model, _ = build_encoder(cfg.encoder, torch.device("cpu"))
    for it in cache.items():
        arr = cache[it]
        sc = load_scene(data / "train" / it)
        full = encode_points(model, sc.coord, sc.color, sc.normal, device="cpu", out_dtype=torch.float16)
        assert np.array_equal(np.asarray(arr["features"]), full.numpy()[np.asarray(arr["index"])])
