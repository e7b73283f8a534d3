"""common.probes: multi-head linear probe, L-BFGS logistic regression, kNN, attentive probe, frozen check.

Independent references: scikit-learn (LogisticRegression, KNeighborsClassifier), autograd, dense numpy
computations, and the same head trained alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from common.errors import CheckpointError, ConfigError, InputError
from common.freeze import NotFrozenError, assert_frozen, freeze
from common.metrics import confusion_matrix, segmentation_metrics
from common.probes import (
    LinearProbeConfig,
    ProbeData,
    evaluate_linear_probe,
    load_probe,
    predict,
    save_probe,
    train_linear_probe,
)
from common.probes.attentive import (
    AttentiveConfig,
    AttentiveProbe,
    evaluate_attentive_probe,
    load_attentive_probe,
    predict_attentive,
    save_attentive_probe,
    train_attentive_probe,
)
from common.probes.engine import HeadGrid
from common.probes.knn import KnnConfig, evaluate_knn, knn_votes
from common.probes.logreg import LogRegConfig, fit_logreg, train_logreg_probe
from common.probes.normalize import apply_normalizer, fit_normalizer

FAST = dict(progress=False)


def _blobs(n, d, k, seed, sep=2.0, scale_spread=1.0):
    """Gaussian classes with per-dimension scales and an offset (standardisation matters)."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((k, d)) * sep / np.sqrt(d) * 3
    y = rng.integers(0, k, n)
    x = means[y] + rng.standard_normal((n, d))
    scales = np.exp(rng.uniform(-scale_spread, scale_spread, d))
    return (x * scales + 3.0).astype(np.float32), y


# ------------------------------------------------------------------------------------- linear
def test_linear_probe_near_sklearn_accuracy():
    x, y = _blobs(4000, 16, 4, seed=0, sep=1.0)
    xtr, ytr, xte, yte = x[:3000], y[:3000], x[3000:], y[3000:]
    res = train_linear_probe(
        ProbeData.from_arrays(xtr, ytr),
        cfg=LinearProbeConfig(epochs=15, batch_size=256, lrs=[1e-3, 1e-2, 1e-1], wds=[0.0, 1e-3], **FAST),
    )
    assert len(res.heads) == 6 and {h["lr"] for h in res.heads} == {1e-3, 1e-2, 1e-1}
    ours = evaluate_linear_probe(res, ProbeData.from_arrays(xte, yte))["top1"]
    sk = LogisticRegression(C=1.0, max_iter=2000).fit(xtr, ytr).score(xte, yte)
    assert sk > 0.6
    assert ours >= sk - 0.02, (ours, sk)
    # the chosen head is the best one on the held-out split and is reported as such
    best_val = max(h["val_top1"] for h in res.heads)
    assert res.best["val_top1"] == best_val
    assert res.meta["selected_on"].startswith("held-out")
    # predict() = normalisation + nn.Linear of the best head
    logits = predict(res, xte)
    lin = res.linear()
    ref = lin(apply_standardize(torch.from_numpy(xte), res.norm)).detach()
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)


def apply_standardize(x, norm):
    return (x - norm["mean"]) / norm["std"]


def test_whiten_normalizer_decorrelates_and_streaming_agrees():
    rng = np.random.default_rng(20)
    q = np.linalg.qr(rng.standard_normal((6, 6)))[0]
    mix = (q * np.logspace(0, 1.5, 6)) @ q.T  # correlated, covariance condition 1000
    x = (rng.standard_normal((4000, 6)) @ mix + rng.standard_normal(6) * 5).astype(np.float32)
    norm = fit_normalizer(torch.from_numpy(x), "whiten", eps=1e-9)
    z = apply_normalizer(torch.from_numpy(x), norm).double()
    torch.testing.assert_close(z.mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        torch.cov(z.t(), correction=0), torch.eye(6, dtype=torch.float64), atol=1e-3, rtol=0
    )
    # streamed statistics (memmap-like windows) agree; compare proj proj^T = inverse covariance (sign-free)
    chunks = [(x[i : i + 700], np.zeros(len(x[i : i + 700]), dtype=np.int64)) for i in range(0, 4000, 700)]
    streamed = fit_normalizer(ProbeData(chunks), "whiten", window_rows=900, eps=1e-9)
    torch.testing.assert_close(streamed["mean"], norm["mean"], rtol=1e-5, atol=1e-4)
    p1, p2 = norm["proj"].double(), streamed["proj"].double()
    inv1, inv2 = p1 @ p1.t(), p2 @ p2.t()
    torch.testing.assert_close(inv2, inv1, rtol=1e-3, atol=1e-4 * float(inv1.abs().max()))
    # a probe trained on whitened features predicts from raw features
    y = (x @ rng.standard_normal(6) > np.median(x @ rng.standard_normal(6))).astype(np.int64)
    res = train_linear_probe(
        ProbeData.from_arrays(x, y),
        cfg=LinearProbeConfig(normalize="whiten", epochs=2, lrs=[1e-2], wds=[0.0], **FAST),
    )
    assert predict(res, x).shape == (4000, 2) and res.norm["proj"].shape == (6, 6)
    torch.testing.assert_close(
        res.folded_linear()(torch.from_numpy(x)).detach(), predict(res, x), rtol=1e-4, atol=1e-4
    )


def test_bfloat16_matmuls_train_as_well_as_float32():
    x, y = _blobs(3000, 16, 4, seed=21, sep=1.0)
    tr, te = ProbeData.from_arrays(x[:2400], y[:2400]), ProbeData.from_arrays(x[2400:], y[2400:])
    cfg = dict(epochs=5, lrs=[1e-2, 1e-1], wds=[0.0], batch_size=128, **FAST)
    acc = {}
    for dt in ("float32", "bfloat16"):
        res = train_linear_probe(tr, cfg=LinearProbeConfig(matmul_dtype=dt, **cfg))
        acc[dt] = evaluate_linear_probe(res, te)["top1"]
        torch.testing.assert_close(
            res.folded_linear()(torch.from_numpy(x)).detach(), predict(res, x), rtol=1e-4, atol=1e-4
        )
    assert acc["float32"] > 0.85 and abs(acc["bfloat16"] - acc["float32"]) < 0.02, acc


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_multi_head_equals_single_head(optimizer):
    x, y = _blobs(1500, 12, 5, seed=1)
    data = ProbeData.from_arrays(x, y)
    common = dict(
        epochs=3, batch_size=128, val_fraction=0.0, optimizer=optimizer, keep_all_heads=True, seed=7, **FAST
    )
    grid = train_linear_probe(data, cfg=LinearProbeConfig(lrs=[1e-3, 1e-2, 5e-2], wds=[0.0, 1e-2], **common))
    for h, row in enumerate(grid.heads):
        alone = train_linear_probe(data, cfg=LinearProbeConfig(lrs=[row["lr"]], wds=[row["wd"]], **common))
        torch.testing.assert_close(
            grid.all_heads["weight"][h], alone.all_heads["weight"][0], rtol=1e-4, atol=1e-5
        )
        torch.testing.assert_close(
            grid.all_heads["bias"][h], alone.all_heads["bias"][0], rtol=1e-4, atol=1e-5
        )
        assert row["train_loss"] == pytest.approx(alone.heads[0]["train_loss"], rel=1e-5)
    # heads with different hyper-parameters really differ
    assert not torch.allclose(grid.all_heads["weight"][0], grid.all_heads["weight"][4])


def test_batched_gradient_matches_autograd():
    torch.manual_seed(0)
    cfg = LinearProbeConfig()
    heads = HeadGrid(7, 4, torch.tensor([0.1, 0.2, 0.3]), torch.zeros(3), cfg.optimizer, cfg.momentum,
                     cfg.betas, torch.device("cpu"))
    heads.W.normal_()
    heads.b.normal_()
    x, y = torch.randn(33, 7), torch.randint(0, 4, (33,))
    gW, gb, loss = heads.grads(x, y)
    for h in range(3):
        w = heads.W[:, h].clone().requires_grad_(True)
        b = heads.b[h].clone().requires_grad_(True)
        ref = torch.nn.functional.cross_entropy(x @ w + b, y)
        ref.backward()
        torch.testing.assert_close(gW[:, h], w.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gb[h], b.grad, rtol=1e-5, atol=1e-6)
        assert loss[h].item() == pytest.approx(ref.item(), rel=1e-5)


def test_ignore_index_rows_are_skipped_even_if_nan():
    x, y = _blobs(800, 8, 3, seed=2)
    x_noise = np.full((300, 8), np.nan, dtype=np.float32)  # would poison training if read
    xa = np.concatenate([x[:400], x_noise, x[400:]])
    ya = np.concatenate([y[:400], np.full(300, -1), y[400:]])
    cfg = LinearProbeConfig(epochs=2, batch_size=64, val_fraction=0.0, lrs=[1e-2], wds=[0.0], **FAST)
    with_ignored = train_linear_probe(ProbeData.from_arrays(xa, ya), cfg=cfg)
    clean = train_linear_probe(ProbeData.from_arrays(x, y), cfg=cfg)
    assert with_ignored.meta["train_rows"] == 800
    torch.testing.assert_close(with_ignored.state_dict["weight"], clean.state_dict["weight"])
    with pytest.raises(InputError, match="NaN"):
        ProbeData.from_arrays(np.where(np.arange(800)[:, None] == 5, np.nan, x), y).load()


def test_segmentation_probe_reports_miou_consistent_with_metrics():
    rng = np.random.default_rng(3)
    scenes = []
    for s in range(12):  # 12 "scenes", per-point labels with ignored points
        x, y = _blobs(300, 10, 5, seed=100 + s)
        y[rng.random(300) < 0.2] = -1
        scenes.append((x, y))
    train = ProbeData(scenes[:9], groups=list(range(9)))
    val = ProbeData(scenes[9:], groups=[9, 10, 11])
    res = train_linear_probe(
        train,
        val,
        LinearProbeConfig(task="segmentation", epochs=4, lrs=[1e-2, 1e-1], wds=[0.0], batch_size=256, **FAST),
    )
    assert res.metric == "mIoU" and "val_mIoU" in res.best
    xv = np.concatenate([s[0] for s in scenes[9:]])
    yv = np.concatenate([s[1] for s in scenes[9:]])
    pred = predict(res, xv).argmax(1).numpy()
    ref = segmentation_metrics(confusion_matrix(pred, yv, 5))
    assert res.best["val_mIoU"] == pytest.approx(ref["mIoU"], abs=1e-6)
    ev = evaluate_linear_probe(res, val)
    assert ev["mIoU"] == pytest.approx(ref["mIoU"], abs=1e-6)
    np.testing.assert_allclose(ev["iou"], ref["iou"], atol=1e-6)
    assert ev["num_rows"] == int((yv >= 0).sum())


def test_held_out_split_is_by_group():
    x, y = _blobs(600, 6, 3, seed=4)
    groups = np.repeat(np.arange(60), 10)
    data = ProbeData.from_arrays(x, y, groups)
    tr, va = data.split(0.2, seed=0)
    assert tr.num_rows + va.num_rows == 600
    assert not set(tr.groups()) & set(va.groups())
    assert len(set(va.groups())) == 12


def test_view_averaging_matches_manual_softmax_average():
    rng = np.random.default_rng(5)
    n_vid, clips, d, k = 120, 4, 8, 3
    vid_y = rng.integers(0, k, n_vid)
    means = rng.standard_normal((k, d)) * 1.2
    x = (means[np.repeat(vid_y, clips)] + rng.standard_normal((n_vid * clips, d)) * 1.5).astype(np.float32)
    y = np.repeat(vid_y, clips)
    g = np.repeat(np.arange(n_vid), clips) + 1000
    tr = ProbeData.from_arrays(x[:320], y[:320], g[:320])
    te = ProbeData.from_arrays(x[320:], y[320:], g[320:])
    res = train_linear_probe(
        tr, cfg=LinearProbeConfig(epochs=5, lrs=[1e-2], wds=[0.0], batch_size=32, **FAST)
    )
    ev = evaluate_linear_probe(res, te)
    probs = torch.softmax(predict(res, x[320:]), 1).numpy().reshape(-1, clips, k).mean(1)
    manual = float((probs.argmax(1) == vid_y[80:]).mean())
    assert ev["top1"] == pytest.approx(manual)
    clip_level = evaluate_linear_probe(res, te, view_average=False)["top1"]
    assert clip_level == pytest.approx(float((predict(res, x[320:]).argmax(1).numpy() == y[320:]).mean()))
    assert ev["top1"] > clip_level  # averaging 4 noisy views helps on this toy problem
    bad = ProbeData.from_arrays(x[:8], np.array([0, 1, 0, 0, 1, 1, 1, 1]), np.repeat([0, 1], 4))
    with pytest.raises(InputError, match="different labels"):
        evaluate_linear_probe(res, bad)
    with pytest.raises(InputError, match="different labels"):  # the conflict spans two eval batches
        evaluate_linear_probe(res, bad, batch_size=3)


def test_streaming_memmap_chunks(tmp_path):
    x, y = _blobs(3000, 12, 4, seed=6, sep=1.5)
    paths = []
    for i in range(5):  # five float16 memmapped chunks, as the feature cache stores them
        p = tmp_path / f"f{i}.npy"
        np.save(p, x[i * 600 : (i + 1) * 600].astype(np.float16))
        paths.append(p)
    chunks = [(np.load(p, mmap_mode="r"), y[i * 600 : (i + 1) * 600]) for i, p in enumerate(paths)]
    data = ProbeData(chunks, groups=list(range(5)))
    # each window pass visits every row exactly once
    seen = np.concatenate([w[0] for w in data.iter_windows(700, np.random.default_rng(0), unit_rows=128)])
    assert seen.shape == (3000, 12)
    np.testing.assert_array_equal(
        np.sort(seen.sum(1)), np.sort(x.astype(np.float16).astype(np.float32).sum(1))
    )
    cfg = dict(
        epochs=6, lrs=[1e-2, 1e-1], wds=[0.0], batch_size=128, window_rows=700, view_average=False, **FAST
    )
    test = ProbeData.from_arrays(x[2400:], y[2400:])
    train = ProbeData(chunks[:4], groups=list(range(4)))
    streamed = train_linear_probe(train, cfg=LinearProbeConfig(max_ram_gb=1e-9, **cfg))
    in_ram = train_linear_probe(train, cfg=LinearProbeConfig(**cfg))
    assert streamed.meta["streamed"] and not in_ram.meta["streamed"]
    assert streamed.meta["steps"] == in_ram.meta["steps"]
    torch.testing.assert_close(streamed.norm["mean"], in_ram.norm["mean"], rtol=1e-5, atol=1e-5)
    a_s = evaluate_linear_probe(streamed, test)["top1"]
    a_r = evaluate_linear_probe(in_ram, test)["top1"]
    assert a_s > 0.8 and abs(a_s - a_r) < 0.03


def test_save_load_roundtrip(tmp_path):
    x, y = _blobs(500, 6, 3, seed=7)
    res = train_linear_probe(
        ProbeData.from_arrays(x, y),
        cfg=LinearProbeConfig(epochs=2, lrs=[1e-2], wds=[0.0], normalize="l2", **FAST),
        class_names=["a", "b", "c"],
    )
    path = save_probe(res, tmp_path / "probe.pt")
    back = load_probe(path)
    assert back.class_names == ["a", "b", "c"] and back.norm["mode"] == "l2"
    assert back.heads == res.heads and back.config == res.config
    torch.testing.assert_close(predict(back, x), predict(res, x))
    with pytest.raises(ConfigError, match="l2"):
        back.folded_linear()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_probe(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="no such"):
        load_probe(tmp_path / "missing.pt")


def test_probe_data_errors_and_cache_adapter():
    x, y = _blobs(20, 4, 2, seed=8)
    with pytest.raises(InputError, match="labels for"):
        ProbeData([(x, y[:5])], names=["scene0001"])
    with pytest.raises(InputError, match="scene0002"):
        ProbeData([(x, y), (x[:, :3], y)], names=["scene0001", "scene0002"])

    class FakeCache:  # the documented FeatureCache contract: items(), cache[item] -> dict of arrays
        def items(self):
            return ["v0", "v1"]

        def __getitem__(self, item):
            return {"features": x[:10] if item == "v0" else x[10:], "labels": np.array(int(item[1]))}

    data = ProbeData.from_cache(FakeCache())
    assert data.num_rows == 20 and data.has_groups
    np.testing.assert_array_equal(data.groups(), np.repeat([0, 1], 10))
    np.testing.assert_array_equal(data.labels(), np.repeat([0, 1], 10))


# ------------------------------------------------------------------------------------- logreg
def test_fit_logreg_matches_sklearn_weights():
    x, y = _blobs(400, 5, 3, seed=9, sep=0.8, scale_spread=0.3)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float64)
    for c in (0.05, 1.0):
        w, b, _ = fit_logreg(torch.from_numpy(x).double(), torch.from_numpy(y), 3, c, max_iter=500, tol=1e-10)
        sk = LogisticRegression(C=c, max_iter=5000, tol=1e-10).fit(x, y)
        np.testing.assert_allclose(w.numpy(), sk.coef_, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(
            b.numpy() - b.numpy().mean(), sk.intercept_ - sk.intercept_.mean(), atol=1e-4
        )


def test_logreg_probe_sweep_and_refit():
    x, y = _blobs(1500, 10, 4, seed=10, sep=0.7)
    xtr, ytr, xte, yte = x[:1200], y[:1200], x[1200:], y[1200:]
    res = train_logreg_probe(
        ProbeData.from_arrays(xtr, ytr), cfg=LogRegConfig(cs=[1e-4, 1e-2, 1.0, 1e2], refine_steps=2, **FAST)
    )
    cs = [h["C"] for h in res.heads]
    assert len(cs) >= 5 and len(set(cs)) == len(cs)  # coarse grid plus distinct refinements
    assert res.meta["refit"] and res.meta["refit_rows"] == 1200
    ours = evaluate_linear_probe(res, ProbeData.from_arrays(xte, yte))["top1"]
    scaled = (xtr - xtr.mean(0)) / xtr.std(0)
    best_sk = max(
        LogisticRegression(C=c, max_iter=3000).fit(scaled, ytr).score((xte - xtr.mean(0)) / xtr.std(0), yte)
        for c in (1e-2, 1e-1, 1.0, 10.0)
    )
    assert ours >= best_sk - 0.03, (ours, best_sk)


# ----------------------------------------------------------------------------------------- knn
def test_knn_uniform_matches_sklearn_and_chunking_is_exact():
    x, y = _blobs(700, 12, 5, seed=11, sep=1.0)
    xtr, ytr, xq = x[:500], y[:500], x[500:]
    xtr = xtr - 3.0  # centre so cosine neighbourhoods are informative
    xq = xq - 3.0
    ks = [1, 5, 15]
    train = (torch.from_numpy(xtr), torch.from_numpy(ytr))
    big = knn_votes(train, xq, 5, KnnConfig(ks=ks, weighting="uniform", **FAST))
    small = knn_votes(
        ProbeData.from_arrays(xtr, ytr),
        xq,
        5,
        KnnConfig(ks=ks, weighting="uniform", window_rows=37, query_chunk=16, **FAST),
    )
    for k in ks:
        sk = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(xtr, ytr)
        np.testing.assert_array_equal(big[k].argmax(1).numpy(), sk.predict(xq))
        torch.testing.assert_close(big[k], small[k])
        assert torch.all(big[k].sum(1) == k)


def test_knn_exp_weights_and_group_votes():
    x, y = _blobs(400, 8, 3, seed=12)
    x = x - 3.0
    xtr, ytr, xq = x[:300], y[:300], x[300:]
    votes = knn_votes(
        (torch.from_numpy(xtr), torch.from_numpy(ytr)), xq, 3, KnnConfig(ks=[10], temperature=0.1, **FAST)
    )[10].numpy()
    a = xq / np.linalg.norm(xq, axis=1, keepdims=True)
    b = xtr / np.linalg.norm(xtr, axis=1, keepdims=True)
    sim = a @ b.T
    ref = np.zeros((100, 3))
    for i in range(100):
        nn = np.argsort(-sim[i])[:10]
        np.add.at(ref[i], ytr[nn], np.exp(sim[i, nn] / 0.1))
    # votes are exp(sim/T) up to one constant factor exp(-1/T)
    np.testing.assert_allclose(votes, ref * np.exp(-1 / 0.1), rtol=1e-4, atol=1e-9)
    # group votes: 25 "videos" of 4 clips each, labels shared within a video
    yq = np.repeat(np.arange(25) % 3, 4)
    g = np.repeat(np.arange(25), 4)
    rows = evaluate_knn(
        ProbeData.from_arrays(xtr, ytr),
        ProbeData.from_arrays(xq, yq, g),
        KnnConfig(ks=[10], temperature=0.1, **FAST),
    )
    vid_pred = ref.reshape(25, 4, 3).sum(1).argmax(1)
    assert rows[0]["num_queries"] == 25
    assert rows[0]["top1"] == pytest.approx(float((vid_pred == np.arange(25) % 3).mean()))


# ----------------------------------------------------------------------------------- attentive
def _marker_task(n, length, d, k, seed):
    """The label is carried by ONE token (marked by a fixed direction) among ``length`` tokens; the
    other tokens carry class vectors of random classes, so mean pooling is confused."""
    rng = np.random.default_rng(seed)
    class_vecs = rng.standard_normal((k, d)) * 2.0
    marker = np.zeros(d)
    marker[:4] = 6.0
    y = rng.integers(0, k, n)
    distract = rng.integers(0, k, (n, length))
    tok = class_vecs[distract] + rng.standard_normal((n, length, d)) * 0.5
    pos = rng.integers(0, length, n)
    tok[np.arange(n), pos] = class_vecs[y] + marker + rng.standard_normal((n, d)) * 0.5
    return tok.astype(np.float32), y


def test_attentive_probe_finds_the_informative_token(tmp_path):
    tok, y = _marker_task(1400, 12, 16, 4, seed=13)
    train = ProbeData.from_arrays(tok[:1000], y[:1000])
    test = ProbeData.from_arrays(tok[1000:], y[1000:])
    cfg = AttentiveConfig(num_heads=2, epochs=12, batch_size=64, lr=3e-3, val_fraction=0.1, **FAST)
    res = train_attentive_probe(train, cfg=cfg)
    acc = evaluate_attentive_probe(res, test)["top1"]
    assert acc > 0.9, acc
    # a linear probe on mean-pooled tokens cannot do this
    lin = (
        LogisticRegression(max_iter=2000)
        .fit(tok[:1000].mean(1), y[:1000])
        .score(tok[1000:].mean(1), y[1000:])
    )
    assert lin < acc - 0.2, (lin, acc)
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    path = save_attentive_probe(res, tmp_path / "att.pt")
    back = load_attentive_probe(path)
    torch.testing.assert_close(
        predict_attentive(back, tok[1000:1100]), predict_attentive(res, tok[1000:1100])
    )


def test_attentive_probe_shapes_and_view_average():
    probe = AttentiveProbe(dim=8, num_heads=2, num_classes=3, depth=2)
    out = probe(torch.randn(5, 7, 8))
    assert out.shape == (5, 3)
    tok, y = _marker_task(60, 5, 8, 3, seed=14)
    g = np.repeat(np.arange(20), 3)
    y = np.repeat(y[:20], 3)
    data = ProbeData.from_arrays(tok, y, g)
    res = train_attentive_probe(data, cfg=AttentiveConfig(num_heads=2, epochs=1, val_fraction=0.0, **FAST))
    ev = evaluate_attentive_probe(res, data)
    probs = torch.softmax(predict_attentive(res, tok), 1).numpy().reshape(20, 3, 3).mean(1)
    assert ev["top1"] == pytest.approx(float((probs.argmax(1) == y[::3]).mean()))


# ------------------------------------------------------------------------------------- frozen
def test_assert_frozen():
    enc = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    with pytest.raises(NotFrozenError, match="training mode"):
        assert_frozen(enc)
    enc.eval()
    with pytest.raises(NotFrozenError, match="require grad"):
        assert_frozen(enc)
    enc.requires_grad_(False)
    assert_frozen(enc)
    enc[1].train()
    with pytest.raises(NotFrozenError, match="training mode"):
        assert_frozen(enc)


def test_freeze_makes_a_module_pass_assert_frozen():
    enc = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    assert freeze(enc) is enc
    assert not enc.training and not enc[1].training
    assert not any(p.requires_grad for p in enc.parameters())
    assert_frozen(enc, "enc")
