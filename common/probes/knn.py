"""Cosine k-nearest-neighbour classification of frozen features (DINOv2 / TWLV-I style).

Features are L2-normalised; each query's k most similar training rows vote for their class with weight
``exp(sim / T)`` (or 1 with ``weighting="uniform"``); with groups the votes of a video's clips are summed
before the arg-max. The search is a chunked matmul with a running top-k, streaming the training rows
once, so neither the (queries x train) similarity matrix nor the training set has to fit in memory.

As a probe of the common contract (:func:`fit_knn` -> :class:`KnnProbeResult`) the "training" stores the
bank: every training row, or one mean row per group (``bank="group"``: a video's views averaged), with
optional z-scoring by the bank's statistics (``standardize``); queries are rows or group means
(``query``). Nothing is trained (0 trainable parameters); the first of ``ks`` is the reported k.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from common.errors import CheckpointError, ConfigError, InputError
from common.metrics import confusion_matrix, segmentation_metrics, topk_accuracy
from common.probes._files import read_probe_file, write_probe_file
from common.probes.data import ProbeData
from common.progress import progress

__all__ = ["KnnConfig", "KnnProbeResult", "knn_votes", "evaluate_knn", "fit_knn"]

BANK_MODES = ("row", "group")


@dataclass
class KnnConfig:
    """Settings of the kNN probe."""

    ks: list[int] = field(default_factory=lambda: [10, 20, 100, 200])  # the first is the reported k
    temperature: float = 0.07  # DINOv2 0.07, TWLV-I 0.1
    weighting: str = "exp"  # "exp": exp(sim / T) | "uniform": one vote per neighbour
    group_vote: bool = True  # sum votes over the rows of a group (a video's clips)
    query_chunk: int = 2048
    window_rows: int = 65536  # training rows per matmul block
    bank: str = "row"  # "row": every training row | "group": one mean row per group (a video's views)
    query: str = "row"  # "row": votes summed over a test group's rows | "group": the group's mean row
    standardize: bool = False  # z-score with the bank's statistics before L2 (features of mixed scales)
    num_classes: int = 0  # 0: 1 + largest label seen
    device: str = "cpu"
    progress: bool = True

    def validate(self) -> None:
        if not self.ks or any(k < 1 for k in self.ks):
            raise ConfigError(f"knn.ks must be positive integers, got {self.ks}")
        if self.temperature <= 0:
            raise ConfigError(f"knn.temperature must be > 0, got {self.temperature}")
        if self.weighting not in ("exp", "uniform"):
            raise ConfigError(f"knn.weighting must be 'exp' or 'uniform', not {self.weighting!r}")
        if self.bank not in BANK_MODES or self.query not in BANK_MODES:
            raise ConfigError(f"knn.bank and knn.query must be 'row' or 'group', not {self.bank!r}, "
                              f"{self.query!r}")


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



# ------------------------------------------------------------------------------ probe contract
def _group_means(x: np.ndarray, y: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One mean row per group (in sorted group order), its label and id; a group's rows share a label."""
    uniq, inv = np.unique(g, return_inverse=True)
    xs = np.stack([x[inv == i].mean(0) for i in range(len(uniq))]) if len(uniq) else x[:0]
    ys = np.full(len(uniq), -1, dtype=np.int64)
    ys[inv] = y
    if not np.array_equal(ys[inv], y):
        raise InputError(None, "kNN: rows of one group (video) carry different labels")
    return xs, ys, uniq


@dataclass
class KnnProbeResult:
    """A kNN probe: the bank (rows, labels), its z-scoring statistics (``norm``: mean / std or None)."""

    bank_x: torch.Tensor  # (N, D) float32, z-scored when standardize
    bank_y: torch.Tensor  # (N,) int64
    norm: dict | None
    num_classes: int
    class_names: list[str] | None
    config: dict
    meta: dict = field(default_factory=dict)

    @property
    def trainable_params(self) -> int:
        return 0

    def _cfg(self) -> KnnConfig:
        return KnnConfig(**self.config)

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        if self.norm is None:
            return x.astype(np.float32, copy=False)
        mean, std = self.norm["mean"].numpy(), self.norm["std"].numpy()
        return ((x - mean) / std).astype(np.float32)

    def _queries(self, data: ProbeData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x, y, g = data.load()
        xn, yn = x.numpy(), y.numpy()
        if self.config.get("query") == "group":
            xn, yn, g = _group_means(xn, yn, g)
        return self._prepare(xn), yn, g

    def _bank(self) -> ProbeData:
        return ProbeData([(self.bank_x.numpy(), self.bank_y.numpy())])

    def evaluate(self, data: ProbeData, view_average: bool | None = None, device: str | None = None,
                 **_: Any) -> dict:
        """The reported k's top1 / top5 / mean_class (fractions; votes summed over a group's rows when
        ``group_vote``), ``k`` (capped at the bank size), ``per_k`` (one row per k), ``num_rows``."""
        cfg = self._cfg()
        if view_average is not None:
            cfg.group_vote = view_average
        if device is not None:
            cfg.device = str(device)
        xq, yq, gq = self._queries(data)
        rows = evaluate_knn(self._bank(), ProbeData([(xq, yq)], [gq] if data.has_groups else None), cfg,
                            self.num_classes)
        out = {m: rows[0][m] for m in ("top1", "top5", "mean_class")}
        out.update(k=min(cfg.ks[0], self.bank_x.shape[0]), per_k=rows, num_rows=data.num_rows,
                   notes=list(rows[0].get("notes", [])))
        return out

    @torch.no_grad()
    def group_scores(self, data: ProbeData) -> np.ndarray:
        """(G, K) neighbour votes of the reported k summed over each group's query rows (sorted groups)."""
        cfg = dataclasses.replace(self._cfg(), progress=False)
        xq, _, gq = self._queries(data)
        votes = knn_votes((self.bank_x, self.bank_y), xq, self.num_classes, cfg)[cfg.ks[0]]
        uniq, inv = np.unique(gq, return_inverse=True)
        return np.stack([votes[inv == i].double().sum(0).numpy() for i in range(len(uniq))])

    def summary(self) -> dict:
        k = min(self.config["ks"][0], self.bank_x.shape[0])
        return {"k": k, "setting": f"k {k}, T {self.config['temperature']}"}

    def save(self, path: str | Path) -> Path:
        payload = {"format": _FORMAT, "version": 1,
                   **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}
        return write_probe_file(payload, path)

    @classmethod
    def load(cls, path: str | Path) -> KnnProbeResult:
        d = read_probe_file(path, _FORMAT, "knn")
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [k for k in names if k not in d]
        if missing:
            raise CheckpointError(f"{path}: probe file lacks {missing}")
        return cls(**{k: d[k] for k in names})


_FORMAT = "probesuite.knn_probe"


def fit_knn(train: ProbeData, val: ProbeData | None = None, cfg: KnnConfig | None = None,
            class_names: Sequence[str] | None = None) -> KnnProbeResult:
    """Build the bank from ``train`` (``val`` is not used: kNN has nothing to select)."""
    cfg = cfg or KnnConfig()
    cfg.validate()
    if len(train.feature_shape) != 1:
        raise InputError(None, f"kNN: rows must be (n, dim) features, got shape {train.feature_shape}")
    if train.num_rows == 0:
        raise InputError(None, "kNN: no labelled training rows")
    x, y, g = train.load()
    xb, yb = x.numpy(), y.numpy()
    if cfg.bank == "group":
        xb, yb, _ = _group_means(xb, yb, g)
    norm = None
    if cfg.standardize:
        stacked = xb.astype(np.float64)
        norm = {"mean": torch.from_numpy(stacked.mean(0)),
                "std": torch.from_numpy(np.maximum(stacked.std(0), 1e-6))}
        xb = ((xb - norm["mean"].numpy()) / norm["std"].numpy()).astype(np.float32)
    k = cfg.num_classes or int(yb.max()) + 1
    if class_names is not None and len(class_names) != k:
        raise InputError(None, f"{len(class_names)} class names for {k} classes")
    return KnnProbeResult(torch.from_numpy(np.ascontiguousarray(xb, dtype=np.float32)),
                          torch.from_numpy(np.ascontiguousarray(yb)), norm, k,
                          list(class_names) if class_names is not None else None, dataclasses.asdict(cfg),
                          {"bank_rows": int(xb.shape[0]), "train_rows": train.num_rows})
