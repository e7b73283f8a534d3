"""common.metrics against scikit-learn and hand-computed cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, jaccard_score, top_k_accuracy_score
from sklearn.metrics import confusion_matrix as sk_confusion

from common.errors import InputError
from common.metrics import (
    confusion_matrix,
    hungarian_match,
    hungarian_miou,
    mean_class_accuracy,
    segmentation_metrics,
    topk_accuracy,
)


def _random_labels(rng, n, k, ignore_frac=0.1):
    target = rng.integers(0, k, n)
    pred = np.where(rng.random(n) < 0.6, target, rng.integers(0, k, n))
    target[rng.random(n) < ignore_frac] = -1
    return pred, target


def test_confusion_matrix_matches_sklearn_and_ignores_index():
    rng = np.random.default_rng(0)
    pred, target = _random_labels(rng, 5000, 7)
    conf = confusion_matrix(pred, target, 7)
    keep = target != -1
    ref = sk_confusion(target[keep], pred[keep], labels=np.arange(7))
    assert conf.dtype == np.int64 and conf.shape == (7, 7)
    np.testing.assert_array_equal(conf, ref)
    # torch inputs give the same counts
    np.testing.assert_array_equal(confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), 7), ref)


def test_segmentation_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    pred, target = _random_labels(rng, 8000, 6)
    keep = target != -1
    m = segmentation_metrics(confusion_matrix(pred, target, 6), class_names=list("abcdef"))
    ref_iou = jaccard_score(target[keep], pred[keep], average=None, labels=np.arange(6))
    np.testing.assert_allclose(m["iou"], ref_iou, rtol=1e-12)
    assert m["mIoU"] == pytest.approx(ref_iou.mean())
    assert m["allAcc"] == pytest.approx(accuracy_score(target[keep], pred[keep]))
    assert m["mAcc"] == pytest.approx(balanced_accuracy_score(target[keep], pred[keep]))
    assert m["class_names"] == list("abcdef")


def test_absent_classes_are_nan_and_left_out_of_the_mean():
    target = np.array([0, 0, 1, 1, 3])
    pred = np.array([0, 1, 1, 1, 2])  # class 2 predicted but absent from target, class 4 absent from both
    m = segmentation_metrics(confusion_matrix(pred, target, 5))
    iou = np.array(m["iou"])
    # hand computed: c0 1/(2) ; c1 2/3 ; c2 0/1 ; c3 0/1 ; c4 nan
    np.testing.assert_allclose(iou[:4], [0.5, 2 / 3, 0.0, 0.0])
    assert np.isnan(iou[4])
    assert m["mIoU"] == pytest.approx(np.mean([0.5, 2 / 3, 0.0, 0.0]))
    assert np.isnan(m["acc"][2]) and np.isnan(m["acc"][4])
    assert m["mAcc"] == pytest.approx(np.mean([0.5, 1.0, 0.0]))
    m_t = segmentation_metrics(confusion_matrix(pred, target, 5), mean_over="target")
    assert m_t["mIoU"] == pytest.approx(np.mean([0.5, 2 / 3, 0.0]))
    m_all = segmentation_metrics(confusion_matrix(pred, target, 5), mean_over="all")
    assert m_all["mIoU"] == pytest.approx(np.sum([0.5, 2 / 3]) / 5)


def test_topk_and_mean_class_accuracy_match_sklearn():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((600, 12))
    target = rng.integers(0, 12, 600)
    logits[np.arange(600), target] += rng.random(600) * 2
    acc = topk_accuracy(torch.from_numpy(logits), target, ks=(1, 5))
    assert acc["top1"] == pytest.approx(accuracy_score(target, logits.argmax(1)))
    assert acc["top5"] == pytest.approx(top_k_accuracy_score(target, logits, k=5, labels=np.arange(12)))
    assert topk_accuracy(logits[:, :3], target % 3, ks=(5,))["top5"] == 1.0  # k clamped to #classes
    pred = logits.argmax(1)
    assert mean_class_accuracy(pred, target, 12) == pytest.approx(balanced_accuracy_score(target, pred))


def test_bad_labels_raise_input_error():
    with pytest.raises(InputError, match="outside"):
        confusion_matrix(np.array([0, 5]), np.array([0, 1]), 3)
    with pytest.raises(InputError, match="outside"):
        confusion_matrix(np.array([0, 1]), np.array([0, 7]), 3)
    with pytest.raises(InputError, match="entries"):
        confusion_matrix(np.array([0, 1, 2]), np.array([0, 1]), 3)


def test_hungarian_on_permuted_labelling_is_perfect():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 8, 3000)
    labels[::17] = -1
    perm = rng.permutation(10)[:8]  # 10 clusters, 8 used: two clusters stay empty
    clusters = np.where(labels >= 0, perm[np.maximum(labels, 0)], rng.integers(0, 10, labels.size))
    mapping = hungarian_match(clusters, labels, 10, 8)
    for c in range(8):
        assert mapping[perm[c]] == c
    out = hungarian_miou(clusters, labels, 10, 8)
    assert out["mIoU"] == pytest.approx(1.0)
    assert out["allAcc"] == pytest.approx(1.0)


def test_hungarian_unmatched_clusters_count_as_errors():
    labels = np.array([0, 0, 0, 1, 1, 1])
    clusters = np.array([0, 0, 2, 1, 1, 1])  # cluster 2 cannot be matched (2 classes, 3 clusters)
    out = hungarian_miou(clusters, labels, 3, 2)
    assert out["mapping"] == [0, 1, -1]
    np.testing.assert_allclose(out["iou"], [2 / 3, 1.0])
    assert out["allAcc"] == pytest.approx(5 / 6)


def test_hungarian_match_is_optimal_against_brute_force():
    rng = np.random.default_rng(4)
    for _ in range(5):
        labels = rng.integers(0, 4, 200)
        clusters = rng.integers(0, 5, 200)
        counts = np.zeros((5, 4), dtype=int)
        np.add.at(counts, (clusters, labels), 1)
        best = max(sum(counts[p[j], j] for j in range(4)) for p in itertools.permutations(range(5), 4))
        mapping = hungarian_match(clusters, labels, 5, 4)
        assert sorted(m for m in mapping if m >= 0) == [0, 1, 2, 3]
        assert sum(counts[c, m] for c, m in enumerate(mapping) if m >= 0) == best


def test_absent_classes_and_mean_class_count_follow_pointcept():
    # classes: 0, 1 present; 2 predicted but absent from the target; 3 neither present nor predicted
    target = np.array([0, 0, 0, 1, 1, 1])
    pred = np.array([0, 0, 2, 1, 1, 0])
    conf = confusion_matrix(pred, target, 4)
    m = segmentation_metrics(conf)
    assert m["support"] == [3, 3, 0, 0] and m["predicted"] == [3, 2, 1, 0]
    assert m["mean_classes"] == 3  # class 3 left out, class 2 counts as IoU 0
    assert m["iou"][2] == 0.0 and np.isnan(m["iou"][3])
    # Pointcept per scene: mask = union != 0, iou = inter / union averaged over the mask
    inter = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - np.diag(conf)
    mask = union != 0
    assert m["mIoU"] == pytest.approx(np.mean(inter[mask] / union[mask]))
    from common.metrics import class_presence

    expected = ["present", "present", "absent, predicted", "absent"]
    assert class_presence(m["support"], m["predicted"]) == expected
