"""common.pca: PCA colours (against a numpy SVD reference), similarity maps, cosine k-means, labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.pca import (
    PCAColorMap,
    categorical_palette,
    fit_pca,
    kmeans,
    kmeans_colors,
    label_colors,
    pca_colors,
    project,
    similarity,
    similarity_colors,
    similarity_heat,
)


def _lowrank(n: int = 3000, d: int = 48, seed: int = 0) -> np.ndarray:
    """Features with a clear spectrum (6 strong directions of distinct variance) plus small noise."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 6)) * np.array([10.0, 8.0, 6.0, 4.0, 3.0, 2.0])
    basis = np.linalg.qr(rng.normal(size=(d, 6)))[0].T
    return (z @ basis + 0.01 * rng.normal(size=(n, d)) + 5.0).astype(np.float32)


def _reference_colors(feat: np.ndarray, brightness: float = 1.2) -> np.ndarray:
    """The Sonata-demo colouring computed with an exact numpy SVD and the same sign convention."""
    x = feat.astype(np.float64) - feat.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    comps = vt[:6].T
    idx = np.abs(comps).argmax(axis=0)
    comps = comps * np.sign(comps[idx, np.arange(6)])
    proj = x @ comps
    rgb = 0.6 * proj[:, :3] + 0.4 * proj[:, 3:6]
    rgb = (rgb - rgb.min(0)) / np.maximum(rgb.max(0) - rgb.min(0), 1e-6)
    return np.clip(rgb * brightness, 0, 1)


def test_pca_colors_match_numpy_svd_reference():
    feat = _lowrank()
    colors = pca_colors(feat)
    assert colors.shape == (len(feat), 3) and colors.dtype == np.float32
    assert colors.min() >= 0 and colors.max() <= 1
    np.testing.assert_allclose(colors, _reference_colors(feat), atol=2e-3)


def test_pca_colors_deterministic_and_sign_stable():
    feat = _lowrank()
    a, b = pca_colors(feat, seed=0), pca_colors(feat, seed=0)
    assert np.array_equal(a, b)
    # another random projection inside pca_lowrank: same components thanks to the sign convention
    f0, f7 = fit_pca(feat, seed=0), fit_pca(feat, seed=7)
    torch.testing.assert_close(f0.components, f7.components, atol=1e-4, rtol=0)
    np.testing.assert_allclose(pca_colors(feat, seed=7), a, atol=1e-4)
    # the largest loading of every component is positive
    comps = f0.components
    assert (comps[comps.abs().argmax(dim=0), torch.arange(6)] > 0).all()
    # flipping the sign of the input flips the components' orientation but the convention restores it
    flipped = fit_pca(-feat + 2 * feat.mean(0), seed=0)
    torch.testing.assert_close(flipped.components, f0.components, atol=1e-4, rtol=0)


def test_pca_colors_vary_with_features():
    feat = _lowrank()
    colors = pca_colors(feat)
    assert len(np.unique(np.round(colors * 255).astype(np.uint8), axis=0)) > 500
    other = pca_colors(_lowrank(seed=1))
    assert np.abs(colors - other).mean() > 0.05
    # rows with identical features get identical colours
    feat2 = feat.copy()
    feat2[10] = feat2[20]
    c2 = pca_colors(feat2)
    assert np.array_equal(c2[10], c2[20])


def test_pca_color_map_applies_consistently_to_parts():
    feat = _lowrank()
    cmap = PCAColorMap.fit(feat)
    whole = cmap(feat)
    np.testing.assert_allclose(cmap(feat[:100]), whole[:100], atol=1e-6)
    np.testing.assert_allclose(whole, pca_colors(feat), atol=1e-6)


def test_pca_few_dims_and_rows():
    rng = np.random.default_rng(0)
    c = pca_colors(rng.normal(size=(50, 2)).astype(np.float32))  # D < 6: zero components padded
    assert c.shape == (50, 3) and np.isfinite(c).all()
    c = pca_colors(rng.normal(size=(3, 16)).astype(np.float32))  # N < 6
    assert c.shape == (3, 3)
    fit = fit_pca(rng.normal(size=(40, 4)), q=6)
    assert fit.components.shape == (4, 6) and project(rng.normal(size=(5, 4)), *fit).shape == (5, 6)
    with pytest.raises(ValueError, match="NaN"):
        pca_colors(np.full((4, 3), np.nan))
    with pytest.raises(ValueError, match="empty"):
        pca_colors(np.zeros((0, 3)))


def test_similarity_is_cosine_and_max_at_query():
    rng = np.random.default_rng(0)
    feat = rng.normal(size=(500, 16)).astype(np.float32)
    sim = similarity(feat, 42)
    ref = feat @ feat[42] / (np.linalg.norm(feat, axis=1) * np.linalg.norm(feat[42]))
    np.testing.assert_allclose(sim, ref, atol=1e-5)
    assert sim.argmax() == 42
    np.testing.assert_allclose(similarity(feat, feat[42] * 3.0), ref, atol=1e-5)
    heat = similarity_heat(sim)
    assert heat.argmax() == 42 and heat.min() >= 0 and heat.max() <= 1
    order = np.argsort(sim)
    assert (np.diff(heat[order]) >= -1e-7).all()  # monotonic
    warm = np.sort(sim)[::-1][int(0.1 * len(sim))]
    assert (heat[sim > warm] >= 0.5).all() and (heat[sim <= warm] <= 0.45 + 1e-6).all()
    colors = similarity_colors(sim)
    assert colors.shape == (500, 3) and len(np.unique(colors, axis=0)) > 100
    with pytest.raises(IndexError):
        similarity(feat, 500)


def test_kmeans_recovers_separated_clusters_like_sklearn():
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(0)
    centers = np.linalg.qr(rng.normal(size=(32, 4)))[0].T * 5
    truth = rng.integers(0, 4, 2000)
    feat = (centers[truth] + 0.5 * rng.normal(size=(2000, 32))).astype(np.float32)
    labels, cent = kmeans(feat, 4, seed=0)
    assert adjusted_rand_score(truth, labels) == 1.0
    normed = feat / np.linalg.norm(feat, axis=1, keepdims=True)
    sk = KMeans(4, n_init=4, random_state=0).fit_predict(normed)
    assert adjusted_rand_score(sk, labels) == 1.0
    counts = np.bincount(labels)
    assert (np.diff(counts) <= 0).all()  # largest cluster first
    assert np.array_equal(kmeans(feat, 4, seed=0)[0], labels)
    np.testing.assert_allclose(torch.linalg.norm(cent, dim=1).numpy(), 1.0, atol=1e-5)
    colors = kmeans_colors(feat, 4, seed=0)
    assert len(np.unique(colors, axis=0)) == 4
    assert np.array_equal(colors, categorical_palette(4)[labels])


def test_label_colors():
    pal = np.array([[255, 0, 0], [0, 255, 0]], dtype=np.uint8)
    c = label_colors(np.array([0, 1, -1, 5]), pal, ignore_color=(0.5, 0.5, 0.5))
    np.testing.assert_allclose(c, [[1, 0, 0], [0, 1, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]])
    assert len(np.unique(label_colors(np.arange(30)), axis=0)) == 30
