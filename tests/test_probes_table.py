"""The probe table (common.probes.registry.PROBES): every entry fits, saves, loads and scores the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.errors import ConfigError
from common.probes import PROBES, ProbeData, ProbeResult, get_probe, load_probe_result
from common.probes.registry import configure

# small, fast settings per table entry (a new entry needs one here: the test fails with a KeyError)
FAST = {
    "linear": dict(epochs=3, batch_size=32, lrs=[1e-2, 1e-1], wds=[0.0]),
    "logreg": dict(cs=[1e-2, 1.0], refine_steps=1, max_iter=50),
    "knn": dict(ks=[5, 3], bank="group", query="row", standardize=True),
    "attentive": dict(num_heads=0, epochs=2, batch_size=16),
}


def _data(rows: str, seed: int, n_groups: int = 24, views: int = 2) -> ProbeData:
    """Grouped rows of 3 separable classes: (n, 6) features or (n, 4, 6) token arrays."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_groups) % 3, views)
    x = rng.standard_normal((len(y), 4, 6)).astype(np.float32) + 2.0 * np.eye(6, dtype=np.float32)[y][:, None]
    if rows == "features":
        x = x.mean(1)
    return ProbeData.from_arrays(x, y, np.repeat(np.arange(n_groups), views))


@pytest.mark.parametrize("name", sorted(PROBES))
def test_every_probe_fits_saves_loads_and_scores_the_same(name, tmp_path):
    spec = get_probe(name)
    cfg = configure(spec.config_class(**FAST[name]), seed=0, progress=False, num_classes=3)
    train, test = _data(spec.rows, 0), _data(spec.rows, 1, n_groups=9)
    res = spec.fit(train, None, cfg, ["a", "b", "c"])
    assert isinstance(res, ProbeResult) and isinstance(res, spec.result_class)
    before = res.evaluate(test)
    assert 0.0 <= before["top1"] <= 1.0 and before["top1"] > 0.5  # separable classes: far above chance
    scores = res.group_scores(test)
    assert scores.shape == (9, 3)
    path = res.save(tmp_path / f"{name}.pt")
    for back in (spec.result_class.load(path), load_probe_result(path)):
        assert type(back) is type(res) and back.trainable_params == res.trainable_params
        after = back.evaluate(test)
        assert {k: after[k] for k in ("top1", "top5", "mean_class")} == \
               {k: before[k] for k in ("top1", "top5", "mean_class")}
        np.testing.assert_allclose(back.group_scores(test), scores, rtol=1e-6)
        assert back.summary()["setting"] == res.summary()["setting"]
    if name == "knn":
        assert res.trainable_params == 0 and before["k"] == 5 and [r["k"] for r in before["per_k"]] == [5, 3]
    else:
        assert res.trainable_params > 0


def test_trainable_params_are_the_kept_weights():
    spec = get_probe("linear")
    res = spec.fit(_data("features", 0), None, configure(spec.config_class(**FAST["linear"]), progress=False),
                   None)
    assert res.trainable_params == 3 * 6 + 3  # one head (K, D) + (K,)
    assert res.meta["grid_params"] == 2 * res.trainable_params  # the grid of 2 heads that was trained
    att = get_probe("attentive").fit(_data("tokens", 0), None,
                                     configure(AttentiveFast(), progress=False), None)
    assert att.trainable_params == sum(p.numel() for p in att.model().parameters())
    assert att.model_kwargs["num_heads"] == 6  # num_heads=0: the largest of 16/12/8/6/... dividing dim 6


def AttentiveFast():  # noqa: N802 - a config factory
    return get_probe("attentive").config_class(**FAST["attentive"])


def test_unknown_probe_name_is_one_config_error_line():
    with pytest.raises(ConfigError) as e:
        get_probe("svm")
    msg = str(e.value)
    assert "\n" not in msg and "'svm'" in msg
    assert all(n in msg for n in PROBES)
    with pytest.raises(ConfigError, match="known: linear, logreg$"):
        get_probe("knn", task="segmentation")


def test_head_grid_trains_from_a_live_batch_iterator():
    """Issue 14's entry point: the grid trained step by step from any (x, y) source, no ProbeData."""
    from common.probes.engine import HeadGrid, lr_factor, rebatch

    torch.manual_seed(0)
    centers = torch.eye(4, 5) * 4

    def live():  # e.g. an encoder's output, batch by batch (blocks of uneven size)
        for n in (50, 70, 30) * 4:
            y = torch.randint(0, 4, (n,))
            yield centers[y] + torch.randn(n, 5), y

    grid = HeadGrid(5, 4, [1e-3, 1e-1], [0.0, 0.0])
    batches = list(rebatch(live(), 64))
    assert [b[0].shape[0] for b in batches[:-1]] == [64] * (len(batches) - 1)
    for step, (x, y) in enumerate(batches):
        loss = grid.train_step(x, y, lr_factor(step, len(batches), 2))
        assert loss.shape == (2,)
    y = torch.arange(400) % 4
    x = centers[y] + torch.randn(400, 5)
    scores = grid.scores([(x, y, np.arange(400))])
    assert len(scores) == 2 and scores[1]["top1"] > 0.9 and scores[1]["loss"] < scores[0]["loss"]
    yg = (torch.arange(400) // 4) % 4  # 100 groups of 4 views sharing a label
    xg = centers[yg] + torch.randn(400, 5)
    grouped = grid.scores([(xg, yg, np.arange(400) // 4)], groups=np.arange(100))  # views averaged by group
    assert grouped[1]["top1"] >= 0.9


def test_video_probe_sections_start_from_the_command_defaults():
    """`knn.ks=[5]` on the command line keeps the video defaults of the other knn keys (T 0.1, one mean
    vector per training video), not the common class's (T 0.07, every view)."""
    from common.config import load_config
    from videoprobe.probe import ProbeConfig

    cfg = load_config(ProbeConfig, None, ["knn.ks=[5]", "attentive.epochs=3"])
    assert cfg.knn.ks == [5] and cfg.knn.temperature == 0.1 and cfg.knn.bank == "group"
    assert cfg.attentive.epochs == 3 and cfg.attentive.num_heads == 0
    assert load_config(ProbeConfig).knn.temperature == 0.1


def _video_cache(tmp_path, split: str, seed: int, n: int = 15):
    """A small video feature cache as `videoprobe extract` writes it: 3 views per video, 3 classes."""
    from common.cache import CacheKey, CacheWriter

    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(3, 8)) * 3
    key = CacheKey(encoder="frame_stats", checkpoint_sha256="none", config_hash="0" * 16, dataset="tiny",
                   split=split)
    with CacheWriter(tmp_path / f"cache_{split}", key, 8, meta={"class_names": ["a", "b", "c"]}) as w:
        for i in range(n):
            y = i % 3
            w.write(f"vid{i:03d}", (centres[y] + rng.normal(size=(3, 8)) * 0.5).astype(np.float32),
                    np.full(3, y))
    return tmp_path / f"cache_{split}"


def test_videoprobe_reaches_logreg_and_refuses_unknown_probes(tmp_path):
    from common.probes.logreg import LogRegConfig
    from videoprobe.probe import ProbeConfig, run_probes, write_probe_report

    train, test = _video_cache(tmp_path, "train", 0), _video_cache(tmp_path, "test", 1, n=9)
    cfg = ProbeConfig(train_cache=str(train), test_cache=str(test), out=str(tmp_path / "out"),
                      probes=["logreg"], logreg=LogRegConfig(val_fraction=0.2, refine_steps=1),
                      progress=False)
    res = run_probes(cfg)["results"]["logreg"]
    assert res["top1"] == 100.0 and res["setting"].startswith("C ")
    assert res["trainable_params"] == 3 * 8 + 3
    md, _ = write_probe_report(cfg, run_probes(cfg))
    assert "logreg" in md.read_text()
    cfg.probes = ["linear", "svm"]
    with pytest.raises(ConfigError, match=r"unknown probe type for classification 'svm'; "
                                          r"known: linear, logreg, knn, attentive$"):
        run_probes(cfg)


def test_pointprobe_reaches_logreg_and_refuses_non_segmentation_probes(tmp_path):
    import dataclasses
    import json

    from common.cache import CacheKey, CacheWriter
    from common.probes.linear import LinearProbeResult
    from pointprobe.probe import SegProbeConfig, run_probe

    rng = np.random.default_rng(0)
    folder = tmp_path / "feat"
    key = CacheKey(encoder="sparseunet", checkpoint_sha256="random:0", config_hash="0" * 16)
    for split, n in (("train", 3), ("val", 2)):
        with CacheWriter(folder / split, dataclasses.replace(key, split=split), 8,
                         meta={"label_set": "segment20"}) as w:
            for i in range(n):
                y = rng.integers(0, 4, 200)
                w.write(f"scene{i:04d}_00", np.eye(8, dtype=np.float32)[y] * 3 +
                        rng.normal(0, 0.05, (200, 8)).astype(np.float32), y)
    cfg = SegProbeConfig(features=[str(folder)], out=str(tmp_path / "out"), probe_type="logreg", n_boot=10)
    cfg.logreg.cs, cfg.logreg.refine_steps, cfg.logreg.progress = [1.0], 0, False
    res = run_probe(cfg)
    rec = res["records"][0]
    assert rec["mIoU"] > 90 and rec["probe_type"] == "logreg" and rec["trainable_params"] == 20 * 8 + 20
    assert isinstance(LinearProbeResult.load(rec["probe"]), LinearProbeResult)
    meta = json.loads((tmp_path / "out" / "results.json").read_text())["meta"]
    assert meta["config"]["probe_type"] == "logreg"
    cfg.probe_type = "knn"
    with pytest.raises(ConfigError, match=r"probe type for segmentation 'knn'; known: linear, logreg$"):
        run_probe(cfg)


def test_probe_data_is_a_batch_source_the_grid_trains_on():
    data = _data("features", 0)
    batches = list(data.batches(10, np.random.default_rng(0), window_rows=16))
    x = torch.cat([b[0] for b in batches])
    assert all(b[0].shape[0] <= 10 for b in batches) and x.shape == (data.num_rows, 6)
    assert sorted(np.concatenate([b[2] for b in batches]).tolist()) == sorted(data.groups().tolist())
    y_all = torch.cat([b[1] for b in batches])
    assert torch.equal(torch.sort(y_all).values, torch.sort(torch.from_numpy(data.labels())).values)
    from common.probes.engine import HeadGrid

    grid = HeadGrid(6, 3, [0.1], [0.0])
    for _ in range(5):
        for xb, yb, _g in data.batches(16, np.random.default_rng(1)):
            grid.train_step(xb, yb)
    assert grid.scores(data.batches(64), groups=data.groups())[0]["top1"] > 0.8  # views averaged per group
