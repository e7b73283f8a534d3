"""Cosine k-nearest-neighbour classification of frozen features (DINOv2 / TWLV-I style).

Features are L2-normalised; each query's k most similar training rows vote for their class with weight
``exp(sim / T)`` (or 1 with ``weighting="uniform"``); with groups the votes of a video's clips are summed
before the arg-max. The search is a chunked matmul with a running top-k, streaming the training rows
once, so neither the (queries x train) similarity matrix nor the training set has to fit in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from common.errors import ConfigError, InputError
from common.metrics import confusion_matrix, segmentation_metrics, topk_accuracy
from common.probes.data import ProbeData
from common.progress import progress

__all__ = ["KnnConfig", "knn_votes", "evaluate_knn"]


@dataclass
class KnnConfig:
    """Settings of the kNN probe."""

    ks: list[int] = field(default_factory=lambda: [10, 20, 100, 200])
    temperature: float = 0.07  # DINOv2 0.07, TWLV-I 0.1
    weighting: str = "exp"  # "exp": exp(sim / T) | "uniform": one vote per neighbour
    group_vote: bool = True  # sum votes over the rows of a group (a video's clips)
    query_chunk: int = 2048
    window_rows: int = 65536  # training rows per matmul block
    device: str = "cpu"
    progress: bool = True

    def validate(self) -> None:
        if not self.ks or any(k < 1 for k in self.ks):
            raise ConfigError(f"knn.ks must be positive integers, got {self.ks}")
        if self.temperature <= 0:
            raise ConfigError(f"knn.temperature must be > 0, got {self.temperature}")
        if self.weighting not in ("exp", "uniform"):
            raise ConfigError(f"knn.weighting must be 'exp' or 'uniform', not {self.weighting!r}")


@torch.no_grad()
def _topk_neighbours(
    train: ProbeData | tuple[torch.Tensor, torch.Tensor], queries: torch.Tensor, kmax: int, cfg: KnnConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Similarities (Q, kmax) sorted descending and the labels of those neighbours."""
    device = torch.device(cfg.device)
    q = F.normalize(queries.float().to(device), dim=1)
    nq = q.shape[0]
    best_s = torch.full((nq, kmax), -float("inf"), device=device)
    best_y = torch.full((nq, kmax), -1, dtype=torch.long, device=device)
    if isinstance(train, tuple):
        x_all, y_all = train
        windows = (
            (x_all[s : s + cfg.window_rows], y_all[s : s + cfg.window_rows])
            for s in range(0, x_all.shape[0], cfg.window_rows)
        )
        n_win = -(-x_all.shape[0] // cfg.window_rows)
    else:
        windows = (
            (torch.from_numpy(x), torch.from_numpy(y)) for x, y, _ in train.iter_windows(cfg.window_rows)
        )
        n_win = None
    for xw, yw in progress(windows, total=n_win, desc="kNN", unit="window",
                           disable=not cfg.progress, leave=False):
        xw = F.normalize(xw.float().to(device), dim=1)
        yw = yw.to(device)
        kk = min(kmax, xw.shape[0])
        for s in range(0, nq, cfg.query_chunk):
            sim = q[s : s + cfg.query_chunk] @ xw.t()
            ts, ti = sim.topk(kk, dim=1)
            cs = torch.cat([best_s[s : s + cfg.query_chunk], ts], dim=1)
            cy = torch.cat([best_y[s : s + cfg.query_chunk], yw[ti]], dim=1)
            top_s, top_i = cs.topk(kmax, dim=1)
            best_s[s : s + cfg.query_chunk] = top_s
            best_y[s : s + cfg.query_chunk] = cy.gather(1, top_i)
    return best_s, best_y


@torch.no_grad()
def knn_votes(
    train: ProbeData | tuple[torch.Tensor, torch.Tensor],
    queries: torch.Tensor | np.ndarray,
    num_classes: int,
    cfg: KnnConfig | None = None,
) -> dict[int, torch.Tensor]:
    """Per query row, class votes (Q, K) for every k of ``cfg.ks`` (cpu float32 tensors).

    ``train`` is a :class:`ProbeData` (streamed) or an in-memory (features, labels) pair. A k larger
    than the training set uses every training row.
    """
    cfg = cfg or KnnConfig()
    cfg.validate()
    queries = (
        torch.as_tensor(np.asarray(queries, dtype=np.float32)) if isinstance(queries, np.ndarray) else queries
    )
    n_train = train.num_rows if isinstance(train, ProbeData) else train[0].shape[0]
    if n_train == 0:
        raise InputError(None, "kNN: no labelled training rows")
    kmax = min(max(cfg.ks), n_train)
    sims, labels = _topk_neighbours(train, queries, kmax, cfg)
    if int(labels.max()) >= num_classes:
        raise InputError(None, f"kNN: training label {int(labels.max())} >= num_classes {num_classes}")
    out = {}
    for k in cfg.ks:
        kk = min(k, kmax)
        if cfg.weighting == "exp":
            w = torch.exp((sims[:, :kk] - 1.0) / cfg.temperature)  # exp(sim/T) up to a constant factor
        else:
            w = torch.ones_like(sims[:, :kk])
        votes = torch.zeros(sims.shape[0], num_classes, device=sims.device)
        votes.scatter_add_(1, labels[:, :kk], w)
        out[k] = votes.cpu()
    return out


def evaluate_knn(
    train: ProbeData, test: ProbeData, cfg: KnnConfig | None = None, num_classes: int | None = None
) -> list[dict]:
    """Top-1 / top-5 / mean-class accuracy of the kNN classifier for every k (one row per k).

    With ``cfg.group_vote`` and grouped test data, votes are summed over each group's rows and the
    group is scored once (its rows must share one label).
    """
    cfg = cfg or KnnConfig()
    cfg.validate()
    if len(test.feature_shape) != 1 or test.feature_shape != train.feature_shape:
        raise InputError(
            None,
            f"kNN: feature shapes {train.feature_shape} (train) and {test.feature_shape} "
            "(test) must be equal (n, dim)",
        )
    k_classes = num_classes or int(max(train.labels().max(), test.labels().max())) + 1
    xq, yq, gq = test.load()
    if train.nbytes_float32 <= 2 * 2**30:
        xt, yt, _ = train.load()
        source: ProbeData | tuple = (xt, yt)
    else:
        source = train
    votes = knn_votes(source, xq, k_classes, cfg)
    yq = yq.numpy()
    if cfg.group_vote and test.has_groups:
        uniq, inv = np.unique(gq, return_inverse=True)
        yg = np.full(len(uniq), -1, dtype=np.int64)
        yg[inv] = yq
        if not np.array_equal(yg[inv], yq):
            raise InputError(None, "kNN: rows of one group (video) carry different labels")
        inv_t = torch.from_numpy(inv)
        votes = {k: torch.zeros(len(uniq), k_classes).index_add_(0, inv_t, v) for k, v in votes.items()}
        yq = yg
    from common.probes.notes import knn_notes

    n_train = train.num_rows
    rows = []
    for k in cfg.ks:
        v = votes[k]
        acc = topk_accuracy(v, yq, ks=(1, 5))
        conf = confusion_matrix(v.argmax(1).numpy(), yq, k_classes)
        rows.append(
            {
                "k": k,
                "T": cfg.temperature,
                "weighting": cfg.weighting,
                "top1": acc["top1"],
                "top5": acc["top5"],
                "mean_class": segmentation_metrics(conf)["mAcc"],
                "num_queries": int(len(yq)),
            }
        )
        notes = knn_notes([k], n_train)
        if notes:
            rows[-1]["notes"] = notes
    return rows

