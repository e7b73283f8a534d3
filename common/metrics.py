"""Evaluation metrics: segmentation (confusion matrix, IoU), classification (top-k, mean-class) and
Hungarian-matched mIoU for unsupervised clusterings.

All scores are fractions in [0, 1] (multiply by 100 for the usual percent tables). Inputs may be numpy
arrays or torch tensors (on any device); results are numpy arrays / Python floats.

IoU convention (documented choice): per class ``IoU = TP / (TP + FP + FN)``. A class that occurs
neither in the target nor in the prediction has ``union == 0``: its IoU (and, if absent from the
target, its accuracy) is NaN and it is left out of the mean (``np.nanmean``). This is Pointcept's
per-scene rule (``mask = union != 0``) and ScanNet's benchmark script rule (NaN when the denominator
is 0); on a whole validation set where every class occurs it equals Pointcept's dataset-level
``np.mean(intersection / union)``. A class that is predicted but absent from the target gets IoU 0
and counts (a false positive is an error); ``mean_over="target"`` restricts the mean to classes
present in the target instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from common.errors import InputError

__all__ = [
    "confusion_matrix",
    "segmentation_metrics",
    "topk_accuracy",
    "mean_class_accuracy",
    "hungarian_match",
    "hungarian_miou",
    "class_presence",
    "MIOU_RULE",
]

MIOU_RULE = (
    "mIoU is the mean IoU over the classes that occur in the evaluation split or are predicted on it; "
    "a class predicted but absent from the split counts as IoU 0 (a false positive is an error), a class "
    "neither present nor predicted is left out (Pointcept's rule, mask = union != 0)"
)


def _to_numpy(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _check_labels(a: np.ndarray, what: str, num_classes: int, ignore_index: int | None) -> None:
    if a.size == 0:
        return
    if not np.issubdtype(a.dtype, np.integer):
        raise InputError(None, f"{what} must be integer class ids, got dtype {a.dtype}")
    valid = a if ignore_index is None else a[a != ignore_index]
    if valid.size and (valid.min() < 0 or valid.max() >= num_classes):
        bad = valid[(valid < 0) | (valid >= num_classes)][0]
        raise InputError(None, f"{what} contains class id {int(bad)} outside [0, {num_classes})")


def confusion_matrix(pred: Any, target: Any, num_classes: int, ignore_index: int = -1) -> np.ndarray:
    """(K, K) int64 counts, rows = target class, columns = predicted class.

    Positions whose target equals ``ignore_index`` are skipped. Ids outside [0, K) raise ``InputError``.
    """
    if isinstance(pred, torch.Tensor) and isinstance(target, torch.Tensor) and pred.is_cuda:
        t = target.reshape(-1).long()
        p = pred.reshape(-1).long().to(t.device)
        keep = t != ignore_index
        t, p = t[keep], p[keep]
        if t.numel() and (t.min() < 0 or t.max() >= num_classes or p.min() < 0 or p.max() >= num_classes):
            _check_labels(_to_numpy(t), "target", num_classes, None)
            _check_labels(_to_numpy(p), "prediction", num_classes, None)
        counts = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
        return counts.reshape(num_classes, num_classes).cpu().numpy().astype(np.int64)
    p = _to_numpy(pred).reshape(-1)
    t = _to_numpy(target).reshape(-1)
    if p.shape != t.shape:
        raise InputError(None, f"prediction has {p.size} entries but target has {t.size}")
    _check_labels(t, "target", num_classes, ignore_index)
    keep = t != ignore_index
    t = t[keep].astype(np.int64)
    p = p[keep]
    _check_labels(p, "prediction", num_classes, None)
    counts = np.bincount(t * num_classes + p.astype(np.int64), minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def _metrics_from_counts(
    inter: np.ndarray, target_area: np.ndarray, pred_area: np.ndarray, mean_over: str
) -> dict:
    inter = inter.astype(np.float64)
    target_area = target_area.astype(np.float64)
    union = target_area + pred_area.astype(np.float64) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
        acc = np.where(target_area > 0, inter / np.maximum(target_area, 1), np.nan)
    if mean_over == "union":
        sel = union > 0
    elif mean_over == "target":
        sel = target_area > 0
    elif mean_over == "all":
        sel = np.ones_like(union, dtype=bool)
        iou = np.nan_to_num(iou, nan=0.0)
        acc = np.nan_to_num(acc, nan=0.0)
    else:
        raise ValueError(f"mean_over must be 'union', 'target' or 'all', not {mean_over!r}")
    total = target_area.sum()
    return {
        "mIoU": float(np.mean(iou[sel])) if sel.any() else float("nan"),
        "mAcc": float(np.nanmean(acc[sel])) if np.isfinite(acc[sel]).any() else float("nan"),
        "allAcc": float(inter.sum() / total) if total > 0 else float("nan"),
        "iou": [float(v) for v in iou],
        "acc": [float(v) for v in acc],
        "support": [int(v) for v in target_area],  # target points per class (0: absent from the split)
        "predicted": [int(v) for v in pred_area],  # predicted points per class
        "mean_classes": int(sel.sum()),  # how many classes the mIoU averages over
    }


def class_presence(support: Sequence[int], predicted: Sequence[int]) -> list[str]:
    """Per class: ``"present"`` (in the target), ``"absent, predicted"`` (IoU 0, counted in the mean)
    or ``"absent"`` (neither in the target nor predicted: left out of the mean)."""
    out = []
    for t, p in zip(support, predicted):
        out.append("present" if t > 0 else ("absent, predicted" if p > 0 else "absent"))
    return out


def segmentation_metrics(
    conf: np.ndarray, class_names: Sequence[str] | None = None, mean_over: str = "union"
) -> dict:
    """mIoU, mAcc, allAcc and per-class ``iou`` / ``acc`` lists from a (K, K) confusion matrix.

    Per-class values are NaN for classes with no support (see the module docstring); ``mean_over``
    chooses which classes enter the means: ``"union"`` (default, present in target or prediction),
    ``"target"`` (present in target) or ``"all"`` (absent classes count as 0, Pointcept's
    dataset-level formula). With ``class_names`` the dict also has ``class_names``.
    """
    conf = _to_numpy(conf)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise InputError(None, f"confusion matrix must be square, got shape {conf.shape}")
    if class_names is not None and len(class_names) != conf.shape[0]:
        raise InputError(None, f"{len(class_names)} class names for a {conf.shape[0]}-class confusion matrix")
    out = _metrics_from_counts(np.diag(conf), conf.sum(1), conf.sum(0), mean_over)
    if class_names is not None:
        out["class_names"] = list(class_names)
    return out


def topk_accuracy(logits: Any, target: Any, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """``{"top1": .., "top5": ..}``: fraction of rows whose target is among the k largest scores.

    k larger than the number of classes is clamped (top-k is then 1.0).
    """
    lg = torch.as_tensor(_to_numpy(logits)) if not isinstance(logits, torch.Tensor) else logits.detach()
    tg = torch.as_tensor(_to_numpy(target)).to(lg.device).long().reshape(-1)
    if lg.ndim != 2 or lg.shape[0] != tg.shape[0]:
        raise InputError(None, f"logits of shape {tuple(lg.shape)} do not match {tg.shape[0]} targets")
    if tg.numel() == 0:
        raise InputError(None, "no samples to score")
    kmax = min(max(ks), lg.shape[1])
    top = lg.topk(kmax, dim=1).indices
    hit = top == tg[:, None]
    out = {}
    for k in ks:
        kk = min(k, lg.shape[1])
        out[f"top{k}"] = float(hit[:, :kk].any(1).float().mean())
    return out


def mean_class_accuracy(pred: Any, target: Any, num_classes: int) -> float:
    """Mean over classes present in ``target`` of per-class recall (= balanced accuracy)."""
    conf = confusion_matrix(pred, target, num_classes, ignore_index=-1)
    return segmentation_metrics(conf)["mAcc"]


def hungarian_match(
    cluster_ids: Any, labels: Any, num_clusters: int, num_classes: int, ignore_index: int = -1
) -> np.ndarray:
    """Best one-to-one cluster -> class assignment (maximises matched points).

    Returns ``mapping`` of shape (num_clusters,) with the class of each cluster, -1 for clusters left
    unmatched (when there are more clusters than classes).
    """
    c = _to_numpy(cluster_ids).reshape(-1)
    t = _to_numpy(labels).reshape(-1)
    if c.shape != t.shape:
        raise InputError(None, f"{c.size} cluster ids but {t.size} labels")
    _check_labels(t, "labels", num_classes, ignore_index)
    keep = t != ignore_index
    c, t = c[keep], t[keep]
    _check_labels(c, "cluster ids", num_clusters, None)
    # counts[i, j]: points of cluster i with class j
    counts = np.bincount(
        c.astype(np.int64) * num_classes + t.astype(np.int64), minlength=num_clusters * num_classes
    ).reshape(num_clusters, num_classes)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    mapping = np.full(num_clusters, -1, dtype=np.int64)
    mapping[rows] = cols
    return mapping


def hungarian_miou(
    cluster_ids: Any,
    labels: Any,
    num_clusters: int,
    num_classes: int,
    ignore_index: int = -1,
    mean_over: str = "union",
) -> dict:
    """Segmentation metrics after Hungarian matching of clusters to classes.

    Points of unmatched clusters count as misses of their target class (they enlarge the union).
    The dict of :func:`segmentation_metrics` gains ``mapping`` (list, cluster -> class or -1).
    """
    mapping = hungarian_match(cluster_ids, labels, num_clusters, num_classes, ignore_index)
    c = _to_numpy(cluster_ids).reshape(-1).astype(np.int64)
    t = _to_numpy(labels).reshape(-1)
    keep = t != ignore_index
    pred = mapping[c[keep]]
    pred = np.where(pred < 0, num_classes, pred)  # extra "no class" column
    conf = confusion_matrix(pred, t[keep].astype(np.int64), num_classes + 1, ignore_index=ignore_index)
    k = num_classes
    out = _metrics_from_counts(np.diag(conf)[:k], conf[:k].sum(1), conf[:, :k].sum(0), mean_over)
    out["mapping"] = [int(m) for m in mapping]
    return out
