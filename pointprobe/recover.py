"""Linear recoverability of one encoder's features from another's (the metric of BFP, continual
pre-training that keeps old features linearly usable).

Given feature caches of an OLD and a NEW encoder extracted from the same scenes (``pointprobe extract``
with full storage: the rows of a scene are its points in the same order) and a probe trained on the
OLD features (``pointprobe probe`` writes ``probe_*.pt``):

1. fit ``A`` by least squares from new to old features on the training scenes: ``old ~ new @ A.T``
   (normal equations accumulated scene by scene, at most ``max_fit_rows`` rows drawn evenly, a small
   ridge ``ridge * trace(X^T X) / D`` for conditioning);
2. score the OLD probe head on ``A f_new(x)`` over the evaluation scenes (of the old domain), beside
   the old probe's own score on ``f_old(x)``; their ratio says how much of what the old features
   offered a linear map still recovers from the new ones. ``r2``: the fraction of the old features'
   variance the map explains on the evaluation scenes.

Python: :func:`fit_linear_map`, :func:`recoverability`. Command line::

    python -m pointprobe.recover --new FEATS_NEW --old FEATS_OLD --probe runs/probe/probe_old.pt \\
        [--train-split train] [--eval-split test] [--out recover.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.cache import FeatureCache
from common.errors import InputError, ProbeSuiteError
from common.probes.data import ProbeData

__all__ = ["fit_linear_map", "recoverability", "main"]


def _cache(folder: str | Path, split: str) -> FeatureCache:
    path = Path(folder) / split
    if not FeatureCache.exists(path):
        raise InputError(path, f"no feature cache for split '{split}' (run `pointprobe extract` first)")
    return FeatureCache(path)


def _paired(new: FeatureCache, old: FeatureCache) -> list[str]:
    """The items of both caches, checked to hold the same points (same items, row counts, labels)."""
    if new.items() != old.items():
        raise InputError(new.path, f"holds other scenes than {old.path} (extract both from the same data)")
    for it in new.items():
        a, b = new[it], old[it]
        if len(a["features"]) != len(b["features"]) or not np.array_equal(a["labels"], b["labels"]):
            raise InputError(new.path / it, f"rows differ from {old.path / it} (extract both with full "
                                            "storage)")
    return new.items()


def fit_linear_map(new: Any, old: Any, ridge: float = 1e-6) -> torch.Tensor:
    """``A`` (D_old, D_new) minimising ``||new @ A.T - old||^2`` (+ a relative ridge) for row-matched
    feature matrices ``new`` (N, D_new) and ``old`` (N, D_old)."""
    x = torch.as_tensor(np.asarray(new), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(old), dtype=torch.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(f"fit_linear_map: need row-matched (N, D) matrices, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    return _solve(x.t() @ x, x.t() @ y, ridge)


def _solve(xtx: torch.Tensor, xty: torch.Tensor, ridge: float) -> torch.Tensor:
    d = xtx.shape[0]
    lam = ridge * float(torch.trace(xtx)) / d
    a_t = torch.linalg.solve(xtx + lam * torch.eye(d, dtype=xtx.dtype), xty)
    return a_t.t().float()


def _fit_from_caches(new: FeatureCache, old: FeatureCache, items: list[str], max_fit_rows: int, ridge: float,
                     seed: int) -> torch.Tensor:
    total = sum(new.n(it) for it in items)
    keep = min(1.0, max_fit_rows / max(total, 1)) if max_fit_rows > 0 else 1.0
    rng = np.random.default_rng(seed)
    xtx = xty = None
    for it in items:
        x = np.asarray(new[it]["features"], np.float64)
        y = np.asarray(old[it]["features"], np.float64)
        if keep < 1.0:
            rows = np.flatnonzero(rng.random(len(x)) < keep)
            x, y = x[rows], y[rows]
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        xtx = xt.t() @ xt if xtx is None else xtx + xt.t() @ xt
        xty = xt.t() @ yt if xty is None else xty + xt.t() @ yt
    return _solve(xtx, xty, ridge)


def recoverability(new_folder: str | Path, old_folder: str | Path, probe: Any, train_split: str = "train",
                   eval_split: str = "test", A: torch.Tensor | None = None, ridge: float = 1e-6,
                   max_fit_rows: int = 200_000, seed: int = 0, device: str = "cpu") -> dict:
    """Score the OLD ``probe`` (a probe result or its file) through ``A`` on the NEW features of
    ``eval_split``; ``A`` is fitted on ``train_split`` unless given. Returns ``mIoU`` (through A),
    ``old_mIoU`` (the old probe on the old features), ``ratio``, ``r2``, the other scores (in %, as the
    probe tables) and ``A``."""
    if not hasattr(probe, "evaluate"):
        from common.probes.registry import load_probe_result

        probe = load_probe_result(probe)
    new_ev, old_ev = _cache(new_folder, eval_split), _cache(old_folder, eval_split)
    ev_items = _paired(new_ev, old_ev)
    if A is None:
        new_tr, old_tr = _cache(new_folder, train_split), _cache(old_folder, train_split)
        A = _fit_from_caches(new_tr, old_tr, _paired(new_tr, old_tr), max_fit_rows, ridge, seed)
    A = torch.as_tensor(A, dtype=torch.float32)
    chunks, sse, sst, sums, sq, n = [], 0.0, 0.0, None, None, 0
    for it in ev_items:
        x = torch.from_numpy(np.array(new_ev[it]["features"], np.float32))
        y = torch.from_numpy(np.array(old_ev[it]["features"], np.float32)).double()
        if A.shape != (y.shape[1], x.shape[1]):
            raise ValueError(f"recoverability: A is {tuple(A.shape)}, the features need "
                             f"({y.shape[1]}, {x.shape[1]})")
        mapped = x @ A.t()
        sse += float(((mapped.double() - y) ** 2).sum())
        sums = y.sum(0) if sums is None else sums + y.sum(0)
        sq = (y ** 2).sum(0) if sq is None else sq + (y ** 2).sum(0)
        n += len(y)
        chunks.append((mapped.numpy(), np.asarray(new_ev[it]["labels"])))
    sst = float((sq - sums ** 2 / max(n, 1)).sum())
    data = ProbeData(chunks, groups=list(range(len(chunks))), names=ev_items)
    through = probe.evaluate(data, device=device)
    own = probe.evaluate(ProbeData.from_cache(old_ev), device=device)
    keys = ("mIoU", "mAcc", "allAcc")
    out = {k: 100 * float(through[k]) for k in keys if k in through}  # in %, as the probe tables
    out.update({f"old_{k}": 100 * float(own[k]) for k in keys if k in own})
    out["ratio"] = out["mIoU"] / out["old_mIoU"] if out.get("old_mIoU") else float("nan")
    out["r2"] = 1.0 - sse / sst if sst > 0 else float("nan")
    out["eval_scenes"] = len(ev_items)
    out["A"] = A
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pointprobe.recover", description=__doc__.split("\n\n")[0])
    ap.add_argument("--new", required=True, help="feature folder of the NEW encoder (extract out=)")
    ap.add_argument("--old", required=True, help="feature folder of the OLD encoder, same scenes")
    ap.add_argument("--probe", required=True, help="probe trained on the OLD features (probe_*.pt)")
    ap.add_argument("--train-split", default="train", help="scenes A is fitted on (default: %(default)s)")
    ap.add_argument("--eval-split", default="test", help="scenes scored (default: %(default)s)")
    ap.add_argument("--max-fit-rows", type=int, default=200_000)
    ap.add_argument("--out", default=None, help="also write the scores as JSON here")
    args = ap.parse_args(argv)
    try:
        res = recoverability(args.new, args.old, args.probe, args.train_split, args.eval_split,
                             max_fit_rows=args.max_fit_rows)
    except ProbeSuiteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    res.pop("A")
    print(f"linear recoverability: old probe through A {res['mIoU']:.2f} mIoU vs on the old features "
          f"{res['old_mIoU']:.2f} (ratio {res['ratio']:.3f}, R^2 {res['r2']:.3f}, "
          f"{res['eval_scenes']} scenes)")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
