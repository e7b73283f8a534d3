"""DINOv2-style linear probing: a whole grid of linear heads (learning rate x weight decay) trained in
one pass over cached features (:class:`common.probes.engine.HeadGrid`), the best head chosen on
validation; cosine schedule with linear warm-up.

Data (:class:`ProbeData`) is a list of chunks (feature array, labels), e.g. memory-mapped arrays of the
feature cache. When the labelled rows fit in ``max_ram_gb`` (as float32) they are loaded into one tensor
(fast path); otherwise each epoch streams shuffled windows (:meth:`ProbeData.iter_windows`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.errors import CheckpointError, ConfigError, InputError
from common.metrics import segmentation_metrics
from common.probes._files import read_probe_file, write_probe_file
from common.probes.data import ProbeData
from common.probes.engine import HeadGrid, group_softmax_sums, lr_factor, score_heads, train_batches
from common.probes.normalize import NORMALIZE_MODES, apply_normalizer, fit_normalizer
from common.progress import progress

__all__ = [
    "ProbeData",
    "LinearProbeConfig",
    "LinearProbeResult",
    "train_linear_probe",
    "evaluate_linear_probe",
    "predict",
    "save_probe",
    "load_probe",
    "fit_normalizer",
    "apply_normalizer",
]


# ------------------------------------------------------------------------------------- config
@dataclass
class LinearProbeConfig:
    """Settings of the multi-head linear probe (one head per (lr, wd) pair)."""

    task: str = "classification"  # "classification" (metric top1) | "segmentation" (metric mIoU)
    lrs: list[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1])
    wds: list[float] = field(default_factory=lambda: [0.0, 1e-4, 1e-3])
    optimizer: str = "adamw"  # "adamw" | "sgd" (momentum, L2 weight decay)
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    epochs: int = 10
    batch_size: int = 1024
    warmup_epochs: float = 1.0
    normalize: str = "standardize"  # "none" | "standardize" | "whiten" | "l2"
    val_fraction: float = 0.1  # held out of train (by group) when no validation data is given
    view_average: bool = True  # classification: average softmax over a group's rows (a video's clips)
    metric: str = "auto"  # "auto" | "top1" | "mean_class" | "mIoU"
    num_classes: int = 0  # 0: 1 + largest label seen
    seed: int = 0
    device: str = "cpu"
    max_ram_gb: float = 2.0  # labelled train rows (float32) up to this size are loaded at once
    window_rows: int = 262144  # streaming mode: rows per shuffled window
    eval_batch_size: int = 65536
    matmul_dtype: str = "float32"  # "bfloat16": training matmuls in bf16 (2x faster on AVX512-BF16 / GPUs)
    keep_all_heads: bool = False  # also return every head's weights (LinearProbeResult.all_heads)
    progress: bool = True

    def validate(self) -> None:
        if self.task not in ("classification", "segmentation"):
            raise ConfigError(f"probe.task must be 'classification' or 'segmentation', not {self.task!r}")
        if not self.lrs or any(lr <= 0 for lr in self.lrs):
            raise ConfigError(f"probe.lrs must be a non-empty list of positive numbers, got {self.lrs}")
        if not self.wds or any(wd < 0 for wd in self.wds):
            raise ConfigError(f"probe.wds must be a non-empty list of numbers >= 0, got {self.wds}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"probe.optimizer must be 'adamw' or 'sgd', not {self.optimizer!r}")
        if self.normalize not in NORMALIZE_MODES:
            raise ConfigError(f"probe.normalize must be one of {NORMALIZE_MODES}, not {self.normalize!r}")
        if self.metric not in ("auto", "top1", "mean_class", "mIoU"):
            raise ConfigError(f"probe.metric must be auto, top1, mean_class or mIoU, not {self.metric!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("probe.epochs and probe.batch_size must be >= 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"probe.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.matmul_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"probe.matmul_dtype must be float32 or bfloat16, not {self.matmul_dtype!r}")
        if len(self.betas) != 2:
            raise ConfigError("probe.betas must have two values")

    def selection_metric(self) -> str:
        if self.metric != "auto":
            return self.metric
        return "mIoU" if self.task == "segmentation" else "top1"


@dataclass
class LinearProbeResult:
    """A trained linear probe: the best head (``weight`` (K, D), ``bias`` (K,)), its normalisation, and
    the table of every head's validation scores."""

    state_dict: dict[str, torch.Tensor]
    norm: dict
    num_classes: int
    class_names: list[str] | None
    metric: str
    heads: list[dict]
    best: dict
    config: dict
    meta: dict = field(default_factory=dict)
    all_heads: dict[str, torch.Tensor] | None = None  # {"weight": (H, K, D), "bias": (H, K)} if kept

    # ------------------------------------------------------------------ the probe contract
    @property
    def trainable_params(self) -> int:
        """Parameters of the kept head (the whole grid trained is in ``meta["grid_params"]``)."""
        return int(sum(v.numel() for v in self.state_dict.values()))

    def evaluate(self, data: ProbeData, view_average: bool | None = None, device: str | torch.device = "cpu",
                 **kw: Any) -> dict:
        """:func:`evaluate_linear_probe` of this probe."""
        return evaluate_linear_probe(self, data, view_average=view_average, device=device, **kw)

    def group_scores(self, data: ProbeData, device: str | torch.device = "cpu") -> np.ndarray:
        """(G, K) softmax probabilities summed over each group's rows (groups in sorted order)."""
        return group_softmax_sums(lambda x: predict(self, x, device=device), data)

    def summary(self) -> dict:
        """What the command reports besides the scores: the chosen hyper-parameters (``setting``)."""
        if self.config.get("probe") == "logreg":
            best = {"C": self.best.get("C")}
            setting = f"C {best['C']:.3g}"
        else:
            best = {k: self.best[k] for k in ("lr", "wd") if k in self.best}
            setting = f"lr {self.best.get('lr')}, wd {self.best.get('wd')}"
        return {"best": best, "selected_on": self.meta.get("selected_on"), "heads": len(self.heads),
                "history": self.meta.get("history") or [], "setting": setting}

    def save(self, path: str | Path) -> Path:
        return save_probe(self, path)

    @classmethod
    def load(cls, path: str | Path) -> LinearProbeResult:
        return load_probe(path)

    def linear(self) -> torch.nn.Linear:
        """The best head as an ``nn.Linear`` (apply :func:`apply_normalizer` with ``norm`` first)."""
        k, d = self.state_dict["weight"].shape
        lin = torch.nn.Linear(d, k)
        lin.load_state_dict(self.state_dict)
        return lin

    def folded_linear(self) -> torch.nn.Linear:
        """The best head with its normalisation folded in: an ``nn.Linear`` on raw features (like a
        released ``seg_head``). Not possible for ``"l2"`` (per-row) normalisation."""
        w = self.state_dict["weight"].double()
        b = self.state_dict["bias"].double()
        mode = self.norm["mode"]
        if mode == "l2":
            raise ConfigError("an l2-normalised probe cannot be folded into one linear layer")
        if mode != "none":
            proj = (
                torch.diag(1.0 / self.norm["std"].double())
                if mode == "standardize"
                else self.norm["proj"].double()
            )
            w = w @ proj.t()  # logits = (x - mean) @ proj @ W^T + b
            b = b - w @ self.norm["mean"].double()
        lin = torch.nn.Linear(w.shape[1], w.shape[0])
        lin.load_state_dict({"weight": w.float(), "bias": b.float()})
        return lin



# ---------------------------------------------------------------------------------- training
def _check_labels(y: np.ndarray, num_classes: int, what: str) -> None:
    if y.size and y.max() >= num_classes:
        raise InputError(None, f"{what} label {int(y.max())} >= num_classes {num_classes}")


def train_linear_probe(
    train: ProbeData,
    val: ProbeData | None = None,
    cfg: LinearProbeConfig | None = None,
    class_names: Sequence[str] | None = None,
) -> LinearProbeResult:
    """Train the (lr x wd) grid of linear heads on ``train``; pick the best on ``val``.

    Without ``val``, ``cfg.val_fraction`` of the training groups (rows if no groups) is held out; with
    ``val_fraction == 0`` the head is chosen on the training set itself (reported as such).
    """
    cfg = cfg or LinearProbeConfig()
    cfg.validate()
    device = torch.device(cfg.device)
    selected_on = "val"
    if val is None:
        if cfg.val_fraction > 0:
            train, val = train.split(cfg.val_fraction, cfg.seed)
            selected_on = f"held-out {cfg.val_fraction:g} of train"
        else:
            val, selected_on = train, "train"
    if train.num_rows == 0:
        raise InputError(None, "no labelled training rows")
    if val.num_rows == 0:
        raise InputError(None, "no labelled validation rows")
    if len(train.feature_shape) != 1 or val.feature_shape != train.feature_shape:
        raise InputError(
            None,
            f"features must be (n, dim) with the same dim, got {train.feature_shape} and {val.feature_shape}",
        )
    y_train = train.labels()
    num_classes = cfg.num_classes or int(max(y_train.max(), val.labels().max())) + 1
    _check_labels(y_train, num_classes, "training")
    _check_labels(val.labels(), num_classes, "validation")
    if class_names is not None and len(class_names) != num_classes:
        raise InputError(None, f"{len(class_names)} class names for {num_classes} classes")

    grid = [(lr, wd) for lr in cfg.lrs for wd in cfg.wds]
    heads = HeadGrid(train.dim, num_classes, [g[0] for g in grid], [g[1] for g in grid], cfg.optimizer,
                     cfg.momentum, cfg.betas, device)
    in_ram = train.nbytes_float32 <= cfg.max_ram_gb * 2**30
    n = train.num_rows
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if in_ram:
        x_all, y_all, _ = train.load(device)
        norm = fit_normalizer(x_all, cfg.normalize)
        x_all = apply_normalizer(x_all, norm, torch.bfloat16 if cfg.matmul_dtype == "bfloat16" else None)
    else:
        norm = fit_normalizer(train, cfg.normalize, cfg.window_rows)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    step = 0
    loss_sum = torch.zeros(heads.H, dtype=torch.float64, device=device)
    # the bar counts optimiser steps (its unit said "epoch": 830 "epochs" for a 2-epoch run)
    bar = progress(total=total, desc=f"linear probe ({heads.H} heads, {cfg.epochs} epochs)", unit="step",
                   disable=not cfg.progress, leave=False)
    # per-epoch curves: every head's mean training loss, and (when the snapshots fit) its weights, to score
    # the chosen head on the validation set after each epoch once the choice is made
    epoch_loss: list[list[float]] = []
    snaps: list[tuple[torch.Tensor, torch.Tensor]] = []
    keep_snaps = cfg.epochs > 1 and 4 * (heads.W.numel() + heads.b.numel()) * cfg.epochs <= _SNAPSHOT_BYTES
    for epoch in range(cfg.epochs):
        loss_sum.zero_()
        for xb, yb in train_batches(
            train, cfg.batch_size, loaded=(x_all, y_all) if in_ram else None, norm=norm,
            out_dtype=torch.bfloat16 if cfg.matmul_dtype == "bfloat16" else None,
            window_rows=cfg.window_rows, gen=gen, rng=rng, device=device,
        ):
            loss = heads.train_step(xb, yb, lr_factor(step, total, warmup))
            loss_sum += loss.double() * xb.shape[0]
            step += 1
            bar.update(1)
        epoch_loss.append((loss_sum / n).cpu().tolist())
        if keep_snaps and epoch < cfg.epochs - 1:
            snaps.append((heads.W.detach().cpu().clone(), heads.b.detach().cpu().clone()))
    bar.close()
    train_loss = epoch_loss[-1]
    # heads never mix (separate columns of one matmul), so a diverged head (lr too large) only spoils itself
    diverged = heads.diverged()
    same = in_ram and val is train  # the loaded rows are already normalised
    scorer = score_heads(
        heads.logits,
        val if not same else (x_all, y_all, train.groups()),
        norm=None if same else norm,
        num_heads=heads.H,
        num_classes=num_classes,
        task=cfg.task,
        view_average=cfg.view_average and val.has_groups,
        batch_size=cfg.eval_batch_size,
        window_rows=cfg.window_rows,
        device=device,
    )
    scores = scorer.result()
    metric = cfg.selection_metric()
    table = []
    for h, ((lr, wd), s) in enumerate(zip(grid, scores)):
        row = {"head": h, "lr": lr, "wd": wd, "train_loss": train_loss[h]}
        row.update({f"val_{k}": v for k, v in s.items()})
        if diverged[h]:
            row[f"val_{metric}"] = float("nan")
        table.append(row)
    vals = np.array([r[f"val_{metric}"] for r in table], dtype=float)
    if np.isnan(vals).all():
        raise InputError(None, f"every head gave a NaN validation {metric}")
    best_h = int(np.nanargmax(vals))
    from common.probes.notes import grid_edge_notes, val_groups_notes

    history = _head_history(best_h, epoch_loss, snaps, scores[best_h], metric, val, train, in_ram,
                            (x_all, y_all) if in_ram else None, norm, num_classes, cfg, device)
    notes = grid_edge_notes(table[best_h], cfg.lrs, cfg.wds)
    if val is not train and val.has_groups:
        notes += val_groups_notes(val.groups(), "group(s) (scenes / videos)")
    return LinearProbeResult(
        state_dict=heads.head_state(best_h),
        norm=norm,
        num_classes=num_classes,
        class_names=list(class_names) if class_names is not None else None,
        metric=metric,
        heads=table,
        best=dict(table[best_h]),
        config=dataclasses.asdict(cfg),
        meta={
            "selected_on": selected_on,
            "train_rows": n,
            "val_rows": val.num_rows,
            "streamed": not in_ram,
            "steps": total,
            "grid_params": heads.num_params,
            "notes": notes,
            "history": history,
        },
        all_heads={"weight": heads.W.permute(1, 2, 0).contiguous().cpu(), "bias": heads.b.clone().cpu()}
        if cfg.keep_all_heads
        else None,
    )


_SNAPSHOT_BYTES = 256 * 2**20  # per-epoch weight snapshots kept for the validation curve, at most


def _head_history(best_h: int, epoch_loss: list[list[float]],
                  snaps: list[tuple[torch.Tensor, torch.Tensor]], final: dict, metric: str, val: ProbeData,
                  train: ProbeData, in_ram: bool, xy: tuple | None, norm: Mapping, num_classes: int,
                  cfg: LinearProbeConfig, device: torch.device) -> list[dict]:
    """The chosen head's curve: ``{"epoch", "train_loss", "val_loss", "val_<metric>"}`` per epoch
    (validation scores of the earlier epochs only when their weight snapshots were kept: see
    ``_SNAPSHOT_BYTES``)."""
    hist = [{"epoch": e + 1, "train_loss": float(losses[best_h])} for e, losses in enumerate(epoch_loss)]
    same = in_ram and val is train
    for e, (W, b) in enumerate(snaps):
        w = W[:, best_h, :].to(device)
        bias = b[best_h].to(device)
        scorer = score_heads(
            lambda x, w=w, bias=bias: (x.float() @ w + bias).unsqueeze(1),
            val if not same else (xy[0], xy[1], train.groups()),
            norm=None if same else norm, num_heads=1, num_classes=num_classes, task=cfg.task,
            view_average=cfg.view_average and val.has_groups, batch_size=cfg.eval_batch_size,
            window_rows=cfg.window_rows, device=device,
        )
        res = scorer.result()[0]
        hist[e].update({"val_loss": float(res["loss"]), f"val_{metric}": float(res[metric])})
    hist[-1].update({"val_loss": float(final["loss"]), f"val_{metric}": float(final[metric])})
    return hist



# ------------------------------------------------------------------------- inference and i/o
def _features_tensor(features: Any) -> torch.Tensor:
    if isinstance(features, torch.Tensor):
        return features.detach().float()
    return torch.from_numpy(np.asarray(features, dtype=np.float32))


@torch.no_grad()
def predict(
    result: LinearProbeResult, features: Any, batch_size: int = 65536, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Logits (N, K) float32 (cpu) of the best head for raw (un-normalised) features (N, D)."""
    w = result.state_dict["weight"].to(device)
    b = result.state_dict["bias"].to(device)
    n = features.shape[0]
    if features.ndim != 2 or features.shape[1] != w.shape[1]:
        raise InputError(
            None, f"features of shape {tuple(features.shape)} do not match the probe's input dim {w.shape[1]}"
        )
    out = torch.empty(n, w.shape[0])
    for s in range(0, n, batch_size):
        x = _features_tensor(features[s : s + batch_size]).to(device)
        out[s : s + batch_size] = (apply_normalizer(x, result.norm) @ w.t() + b).cpu()
    return out


@torch.no_grad()
def evaluate_linear_probe(
    result: LinearProbeResult,
    data: ProbeData,
    view_average: bool | None = None,
    batch_size: int = 65536,
    device: str | torch.device = "cpu",
) -> dict:
    """Scores of the best head on ``data``: classification top1/top5/mean_class (softmax averaged over a
    group's rows when ``view_average``, default from the config), segmentation mIoU/mAcc/allAcc and
    per-class ``iou``; always ``loss``, ``confusion`` (K, K) and ``num_rows``."""
    task = result.config.get("task", "classification")
    va = result.config.get("view_average", True) if view_average is None else view_average
    device = torch.device(device)
    w = result.state_dict["weight"].to(device)
    b = result.state_dict["bias"].to(device)
    if data.feature_shape != (w.shape[1],):
        raise InputError(
            None, f"features of shape {data.feature_shape} do not match the probe's dim {w.shape[1]}"
        )
    scorer = score_heads(
        lambda x: (x @ w.t() + b).unsqueeze(1),
        data,
        norm=result.norm,
        num_heads=1,
        num_classes=result.num_classes,
        task=task,
        view_average=va and data.has_groups,
        batch_size=batch_size,
        window_rows=262144,
        device=device,
    )
    out = scorer.result()[0]
    conf = scorer.confusion(0)
    if task == "segmentation":
        seg = segmentation_metrics(conf, result.class_names)
        out["iou"] = seg["iou"]
        out["acc"] = seg["acc"]
    out["confusion"] = conf
    out["num_rows"] = data.num_rows
    return out


_FORMAT = "probesuite.linear_probe"


def save_probe(result: LinearProbeResult, path: str | Path) -> Path:
    """Save a trained probe (plain tensors / lists / dicts) atomically through ``common.checkpoint``."""
    payload = {
        "format": _FORMAT,
        "version": 1,
        "state_dict": result.state_dict,
        "norm": result.norm,
        "num_classes": result.num_classes,
        "class_names": result.class_names,
        "metric": result.metric,
        "heads": result.heads,
        "best": result.best,
        "config": result.config,
        "meta": result.meta,
    }
    return write_probe_file(payload, path)


def load_probe(path: str | Path) -> LinearProbeResult:
    """Load a probe written by :func:`save_probe` (``CheckpointError`` naming the file otherwise)."""
    d = read_probe_file(path, _FORMAT, "linear")
    missing = [
        k for k in ("state_dict", "norm", "num_classes", "metric", "heads", "best", "config") if k not in d
    ]
    if missing or set(d["state_dict"]) != {"weight", "bias"}:
        raise CheckpointError(f"{path}: probe file lacks {missing or 'weight/bias'}")
    return LinearProbeResult(
        state_dict=d["state_dict"],
        norm=d["norm"],
        num_classes=int(d["num_classes"]),
        class_names=d.get("class_names"),
        metric=d["metric"],
        heads=d["heads"],
        best=d["best"],
        config=d["config"],
        meta=d.get("meta", {}),
    )
