"""Multinomial logistic regression with full-batch L-BFGS in torch, sweeping the inverse regularisation C.

Objective (scikit-learn's, divided by ``C * n``): ``mean_i CE(W x_i + b, y_i) + ||W||^2 / (2 C n)``; the
bias is not penalised. C is searched coarse-to-fine on a hold-out (CLIP's benchmark procedure): a
coarse log10 grid, then ``refine_steps`` rounds that try the best value times 10^(+-step) and halve the
step, each fit warm-started from the nearest C already fitted; the best C is then refit on train+val.
The training rows are loaded into memory (full batch).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from common.errors import ConfigError, InputError
from common.probes.data import ProbeData
from common.probes.engine import score_heads
from common.probes.linear import LinearProbeResult
from common.probes.normalize import apply_normalizer, fit_normalizer
from common.progress import progress

__all__ = ["LogRegConfig", "fit_logreg", "train_logreg_probe"]


@dataclass
class LogRegConfig:
    """Settings of the L-BFGS logistic-regression probe."""

    task: str = "classification"  # or "segmentation" (metric mIoU)
    cs: list[float] = field(default_factory=lambda: [1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4, 1e6])  # coarse grid
    refine_steps: int = 3  # log10 step 1, 0.5, 0.25 around the best coarse C
    val_fraction: float = 0.1
    refit: bool = True  # refit the best C on train + val
    normalize: str = "standardize"  # "none" | "standardize" | "l2"
    max_iter: int = 1000
    tol: float = 1e-6  # max-abs gradient of the (mean) objective
    history_size: int = 20
    view_average: bool = True
    metric: str = "auto"  # "auto" | "top1" | "mean_class" | "mIoU"
    num_classes: int = 0
    dtype: str = "float32"  # "float64" for exact comparisons
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def validate(self) -> None:
        if self.task not in ("classification", "segmentation"):
            raise ConfigError(f"logreg.task must be 'classification' or 'segmentation', not {self.task!r}")
        if not self.cs or any(c <= 0 for c in self.cs):
            raise ConfigError(f"logreg.cs must be positive numbers, got {self.cs}")
        if self.dtype not in ("float32", "float64"):
            raise ConfigError(f"logreg.dtype must be float32 or float64, not {self.dtype!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"logreg.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.metric not in ("auto", "top1", "mean_class", "mIoU"):
            raise ConfigError(f"logreg.metric must be auto, top1, mean_class or mIoU, not {self.metric!r}")

    def selection_metric(self) -> str:
        if self.metric != "auto":
            return self.metric
        return "mIoU" if self.task == "segmentation" else "top1"


def fit_logreg(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    C: float,
    max_iter: int = 1000,
    tol: float = 1e-6,
    history_size: int = 20,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One L-BFGS fit (strong-Wolfe line search). Returns (weight (K, D), bias (K,), iterations)."""
    n, d = x.shape
    if init is None:
        w = torch.zeros(num_classes, d, dtype=x.dtype, device=x.device)
        b = torch.zeros(num_classes, dtype=x.dtype, device=x.device)
    else:
        w, b = init[0].clone().to(x), init[1].clone().to(x)
    w.requires_grad_(True)
    b.requires_grad_(True)
    lam = 1.0 / (C * n)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        max_eval=max_iter * 2,
        tolerance_grad=tol,
        tolerance_change=1e-12 if x.dtype == torch.float64 else 1e-9,
        history_size=history_size,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=False)
        loss = F.cross_entropy(torch.addmm(b, x, w.t()), y) + 0.5 * lam * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    iters = int(opt.state[opt.param_groups[0]["params"][0]].get("n_iter", 0))
    w, b = w.detach(), b.detach()
    if not (torch.isfinite(w).all() and torch.isfinite(b).all()):
        raise InputError(None, f"logistic regression diverged at C={C:g} (non-finite weights)")
    return w, b, iters


def _nearest(fits: dict[float, tuple], log_c: float):
    if not fits:
        return None
    key = min(fits, key=lambda k: abs(k - log_c))
    return fits[key][:2]


def train_logreg_probe(
    train: ProbeData,
    val: ProbeData | None = None,
    cfg: LogRegConfig | None = None,
    class_names: Sequence[str] | None = None,
) -> LinearProbeResult:
    """Sweep C (coarse-to-fine) on ``val`` (or a held-out fraction of ``train`` by group), refit the
    best on all labelled rows; returns a :class:`LinearProbeResult` (``heads`` = one row per C tried),
    usable with ``linear.predict`` / ``evaluate_linear_probe`` / ``save_probe``."""
    cfg = cfg or LogRegConfig()
    cfg.validate()
    device = torch.device(cfg.device)
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    full = train
    split_from_train = val is None
    if val is None:
        train, val = train.split(cfg.val_fraction, cfg.seed)
        selected_on = f"held-out {cfg.val_fraction:g} of train"
    else:
        selected_on = "val"
    if train.num_rows == 0 or val.num_rows == 0:
        raise InputError(None, "logistic regression needs labelled training and validation rows")
    if len(train.feature_shape) != 1 or val.feature_shape != train.feature_shape:
        raise InputError(
            None, f"features must be (n, dim) with one dim, got {train.feature_shape}, {val.feature_shape}"
        )
    k = cfg.num_classes or int(max(train.labels().max(), val.labels().max())) + 1
    metric = cfg.selection_metric()

    x_tr, y_tr, _ = train.load(device)
    norm = fit_normalizer(x_tr, cfg.normalize)
    x_tr = apply_normalizer(x_tr, norm).to(dtype)
    if int(y_tr.max()) >= k:
        raise InputError(None, f"training label {int(y_tr.max())} >= num_classes {k}")
    va = cfg.view_average and val.has_groups
    x_va, y_va, g_va = val.load(device)
    val_rows = (apply_normalizer(x_va, norm), y_va, g_va)  # scored once per C, normalised once

    fits: dict[float, tuple] = {}
    table: dict[float, dict] = {}
    bar = progress(desc="logreg C sweep", unit="fit", disable=not cfg.progress, leave=False)

    def try_c(log_c: float) -> None:
        log_c = round(log_c, 6)
        if log_c in table:
            return
        c = 10.0**log_c
        t0 = time.perf_counter()
        w, b, it = fit_logreg(
            x_tr, y_tr, k, c, cfg.max_iter, cfg.tol, cfg.history_size, _nearest(fits, log_c)
        )
        dt = time.perf_counter() - t0
        fits[log_c] = (w, b)
        wf, bf = w.float(), b.float()
        s = score_heads(
            lambda z: (z @ wf.t() + bf).unsqueeze(1),
            val_rows,
            norm=None,  # normalised once above
            num_heads=1,
            num_classes=k,
            task=cfg.task,
            view_average=va,
            batch_size=65536,
            window_rows=262144,
            device=device,
        ).result()[0]
        table[log_c] = {"C": c, "iters": it, "fit_s": round(dt, 3), **{f"val_{m}": v for m, v in s.items()}}
        bar.update(1)
        bar.set_postfix(C=f"{c:.3g}", **{metric: f"{s[metric]:.4f}"})

    def best() -> float:
        # highest score; ties -> stronger regularisation (smaller C)
        return max(table, key=lambda lc: (np.nan_to_num(table[lc][f"val_{metric}"], nan=-1.0), -lc))

    coarse = sorted(round(math.log10(c), 6) for c in cfg.cs)
    for lc in coarse:
        try_c(lc)
    step = (coarse[-1] - coarse[0]) / max(len(coarse) - 1, 1) / 2 if len(coarse) > 1 else 0.5
    for _ in range(cfg.refine_steps):
        b_lc = best()
        try_c(b_lc - step)
        try_c(b_lc + step)
        step /= 2
    bar.close()
    best_lc = best()
    w, b = fits[best_lc]
    meta = {
        "selected_on": selected_on,
        "train_rows": train.num_rows,
        "val_rows": val.num_rows,
        "fits": len(table),
        "refit": False,
    }
    if cfg.refit:
        x_all, y_all, _ = full.load(device) if split_from_train else _concat_load(train, val, device)
        norm = fit_normalizer(x_all, cfg.normalize)
        x_all = apply_normalizer(x_all, norm).to(dtype)
        t0 = time.perf_counter()
        w, b, it = fit_logreg(x_all, y_all, k, 10.0**best_lc, cfg.max_iter, cfg.tol, cfg.history_size, (w, b))
        meta.update(
            refit=True,
            refit_rows=int(x_all.shape[0]),
            refit_iters=it,
            refit_s=round(time.perf_counter() - t0, 3),
        )
    heads = [dict(table[lc], head=i) for i, lc in enumerate(sorted(table))]
    best_row = next(h for h in heads if h["C"] == 10.0**best_lc)
    return LinearProbeResult(
        state_dict={"weight": w.float().cpu(), "bias": b.float().cpu()},
        norm=norm,
        num_classes=k,
        class_names=list(class_names) if class_names is not None else None,
        metric=metric,
        heads=heads,
        best=dict(best_row),
        config={"probe": "logreg", **dataclasses.asdict(cfg)},
        meta=meta,
    )


def _concat_load(a: ProbeData, b: ProbeData, device: torch.device):
    xa, ya, ga = a.load(device)
    xb, yb, gb = b.load(device)
    return torch.cat([xa, xb]), torch.cat([ya, yb]), np.concatenate([ga, gb])
