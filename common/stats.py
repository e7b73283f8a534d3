"""Spread of a metric: mean and standard deviation over seeds, percentile bootstrap over evaluation groups.

* ``mean_std``: the mean over seeds and the sample standard deviation (``ddof=1``) when there are two or
  more seeds; one seed has no spread (std ``None``).
* ``bootstrap_ci``: percentile bootstrap. The evaluation groups (scenes, videos) are resampled with
  replacement ``n_boot`` times with ``numpy.random.default_rng(seed)`` (one ``integers(0, G, (n_boot, G))``
  draw), the statistic is recomputed on every resample and the ``alpha / 2`` and ``1 - alpha / 2``
  percentiles (numpy's default linear interpolation, NaN resamples ignored) are the interval.
* ``bootstrap_sum_ci``: the same draws for statistics of a sum over groups (mIoU of summed per-scene
  confusion matrices), several statistics in one pass and without copying each resample: cheap for
  200 classes and hundreds of scenes.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from common.errors import ConfigError

STD_DDOF = 1  # sample standard deviation over seeds
BOOTSTRAP_SEED = 0
N_BOOT = 1000
ALPHA = 0.05


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """(mean, std with ddof=1) of per-seed values; std is None for a single value."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ConfigError("mean_std: no values")
    mean = float(v[0]) if v.size == 1 else float(np.mean(v))
    return mean, (float(np.std(v, ddof=STD_DDOF)) if v.size >= 2 else None)


def _resamples(groups: Any, n_boot: int, seed: int, alpha: float, what: str) -> tuple[np.ndarray, np.ndarray]:
    """The per-group array and the (n_boot, G) group indices of the resamples (checked arguments)."""
    arr = np.asarray(groups)
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise ConfigError(f"{what}: no evaluation groups")
    if n_boot < 1:
        raise ConfigError(f"bootstrap n_boot must be >= 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ConfigError(f"bootstrap alpha must be in (0, 1), got {alpha}")
    g = arr.shape[0]
    return arr, np.random.default_rng(seed).integers(0, g, size=(n_boot, g))


def bootstrap_ci(per_group_stats: Any, statistic: Callable[[np.ndarray], float], n_boot: int = N_BOOT,
                 seed: int = BOOTSTRAP_SEED, alpha: float = ALPHA) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over resampled groups.

    ``per_group_stats``: an array whose first axis is the evaluation group (e.g. (G, C, C) per-scene
    confusion matrices, or (G, S) per-video correctness for S seeds); ``statistic`` maps a resampled
    array of the same layout to one number.
    """
    arr, idx = _resamples(per_group_stats, n_boot, seed, alpha, "bootstrap_ci")
    values = np.array([statistic(arr[i]) for i in idx], dtype=np.float64)
    if np.isnan(values).all():
        return float("nan"), float("nan")
    lo, hi = np.nanpercentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def bootstrap_sum_ci(per_group_counts: Any, statistic: Callable[[np.ndarray], Sequence[float]],
                     n_boot: int = N_BOOT, seed: int = BOOTSTRAP_SEED, alpha: float = ALPHA,
                     chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``bootstrap_ci`` for statistics of the *sum* over groups (e.g. mIoU of summed confusion matrices),
    several at once: the same resamples (same ``seed``: the same draws as ``bootstrap_ci``), each summed
    as multiplicities @ counts (one matrix product per ``chunk`` resamples instead of copying every
    resample). ``statistic`` maps a summed array (``per_group_counts.shape[1:]``) to a vector of values;
    returns (low, high) vectors."""
    arr, idx = _resamples(per_group_counts, n_boot, seed, alpha, "bootstrap_sum_ci")
    g = arr.shape[0]
    flat = arr.reshape(g, -1).astype(np.float64)  # integer counts: exact in float64 below 2**53
    values = []
    for s in range(0, n_boot, chunk):
        mult = np.stack([np.bincount(i, minlength=g) for i in idx[s:s + chunk]]).astype(np.float64)
        for summed in mult @ flat:
            values.append(np.asarray(statistic(summed.reshape(arr.shape[1:])), dtype=np.float64))
    v = np.stack(values)  # (n_boot, M)
    lo, hi = np.full(v.shape[1], np.nan), np.full(v.shape[1], np.nan)
    ok = ~np.isnan(v).all(0)
    if ok.any():
        lo[ok], hi[ok] = np.nanpercentile(v[:, ok], [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
    return lo, hi


def format_spread(mean: float, std: float | None, ci: Sequence[float] | None, fmt: str = ".2f") -> str:
    """``43.50 ± 0.40 [42.10, 44.80]`` (no ``±`` part for one seed, no interval without one)."""
    text = format(mean, fmt)
    if std is not None:
        text += f" ± {format(std, fmt)}"
    if ci is not None and all(c is not None and np.isfinite(c) for c in ci):
        text += f" [{format(ci[0], fmt)}, {format(ci[1], fmt)}]"
    return text
