"""Small-data traps: a warning in the log and a note for the result JSON (``"notes": [...]``).

Each check returns the notes it found (and logs each as a warning), so a caller gathers them with
``notes += check(...)``. The traps: a kNN k larger than the training set (every training row votes),
the chosen head at the edge of the lr or wd grid (the best value may lie outside it), top-5 accuracy
on fewer than 6 classes (it is trivially high: 100 % with 5 classes), and a validation set of 1-2
groups (scenes / videos: the head is chosen on almost nothing).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["knn_notes", "grid_edge_notes", "top5_notes", "val_groups_notes", "warn_notes"]


def warn_notes(notes: list[str], logger: logging.Logger | None = None) -> list[str]:
    """Log every note as a warning; returns ``notes``."""
    for n in notes:
        (logger or log).warning(n)
    return notes


def knn_notes(ks: Sequence[int], n_train: int, what: str = "training rows") -> list[str]:
    """kNN with k larger than the training set."""
    big = sorted({int(k) for k in ks if int(k) > n_train})
    if not big:
        return []
    return warn_notes([f"kNN: k={', '.join(map(str, big))} is larger than the {n_train} {what}: every "
                       f"{what.split()[-1][:-1]} votes (k is effectively {n_train})"])


def grid_edge_notes(best: dict, lrs: Sequence[float], wds: Sequence[float]) -> list[str]:
    """The chosen head at the edge of the lr grid (either end) or of the wd grid (the upper end, or the
    lower end when it is above 0: wd = 0 is the natural bottom)."""
    notes = []
    lr, wd = best.get("lr"), best.get("wd")
    if lr is not None and len(lrs) > 1 and lr in (min(lrs), max(lrs)):
        side = "smallest" if lr == min(lrs) else "largest"
        notes.append(f"linear probe: the chosen lr {lr:g} is the {side} of the grid {list(lrs)}: "
                     "the best lr may lie outside it (widen linear.lrs)")
    if wd is not None and len(wds) > 1 and (wd == max(wds) or (wd == min(wds) and wd > 0)):
        side = "largest" if wd == max(wds) else "smallest"
        notes.append(f"linear probe: the chosen wd {wd:g} is the {side} of the grid {list(wds)}: "
                     "the best wd may lie outside it (widen linear.wds)")
    return warn_notes(notes)


def top5_notes(num_classes: int) -> list[str]:
    """Top-5 accuracy on fewer than 6 classes."""
    if num_classes >= 6:
        return []
    return warn_notes([f"top-5 accuracy on {num_classes} classes is trivially high (100 % with 5 or "
                       "fewer classes): read top-1"])


def val_groups_notes(groups: np.ndarray | Sequence[int] | None, what: str = "groups",
                     probe: str = "linear probe", purpose: str = "chooses the head") -> list[str]:
    """A validation set of 1-2 groups (scenes / videos)."""
    if groups is None:
        return []
    n = len(np.unique(np.asarray(groups)))
    if n > 2:
        return []
    return warn_notes([f"{probe}: the validation set that {purpose} has only {n} {what}: it is noisy "
                       "(more training data or a larger val_fraction)"])
