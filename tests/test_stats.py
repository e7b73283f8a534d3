"""common.stats: spread over seeds against numpy, the bootstrap interval against a hand-written one."""
from __future__ import annotations

import numpy as np
import pytest

from common.errors import ConfigError
from common.stats import bootstrap_ci, format_spread, mean_std


def test_mean_std_is_numpy_with_ddof_1():
    v = [43.1, 44.7, 42.9]
    mean, std = mean_std(v)
    assert mean == pytest.approx(np.mean(v), abs=1e-12)
    assert std == pytest.approx(np.std(v, ddof=1), abs=1e-12)
    assert std != pytest.approx(np.std(v, ddof=0), abs=1e-6)


def test_one_seed_has_its_value_and_no_spread():
    assert mean_std([0.1 + 0.2]) == (0.1 + 0.2, None)


def test_bootstrap_matches_hand_computed_percentiles():
    rng = np.random.default_rng(5)
    correct = (rng.random(37) < 0.6).astype(float)
    lo, hi = bootstrap_ci(correct, np.mean, n_boot=500, seed=11, alpha=0.1)
    idx = np.random.default_rng(11).integers(0, 37, size=(500, 37))
    boots = np.array([correct[i].mean() for i in idx])
    assert lo == pytest.approx(np.percentile(boots, 5), abs=1e-12)
    assert hi == pytest.approx(np.percentile(boots, 95), abs=1e-12)
    assert lo < correct.mean() < hi


def test_bootstrap_resamples_the_first_axis_of_matrices():
    conf = np.random.default_rng(1).integers(0, 20, size=(9, 3, 3))

    def acc(c):
        s = c.sum(0)
        return np.trace(s) / s.sum()

    lo, hi = bootstrap_ci(conf, acc, n_boot=200, seed=3)
    idx = np.random.default_rng(3).integers(0, 9, size=(200, 9))
    boots = [acc(conf[i]) for i in idx]
    assert (lo, hi) == pytest.approx(tuple(np.percentile(boots, [2.5, 97.5])), abs=1e-12)


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="no evaluation groups"):
        bootstrap_ci(np.zeros(0), np.mean)
    with pytest.raises(ConfigError, match="n_boot"):
        bootstrap_ci(np.ones(3), np.mean, n_boot=0)


def test_format_spread():
    assert format_spread(43.5, 0.4, [42.1, 44.8]) == "43.50 ± 0.40 [42.10, 44.80]"
    assert format_spread(43.5, None, [42.1, 44.8]) == "43.50 [42.10, 44.80]"


def test_bootstrap_sum_ci_equals_the_resampling_bootstrap():
    from common.metrics import segmentation_metrics
    from common.stats import bootstrap_sum_ci

    conf = np.random.default_rng(2).integers(0, 30, size=(11, 2, 4, 4))  # (scenes, seeds, C, C)

    def stat_sum(summed):
        return [np.mean([segmentation_metrics(c)[m] for c in summed]) for m in ("mIoU", "allAcc")]

    lo, hi = bootstrap_sum_ci(conf, stat_sum, n_boot=150, seed=9, chunk=16)
    for j, m in enumerate(("mIoU", "allAcc")):
        ref = bootstrap_ci(conf, lambda s, m=m: np.mean([segmentation_metrics(c)[m] for c in s.sum(0)]),
                           n_boot=150, seed=9)
        assert (lo[j], hi[j]) == pytest.approx(ref, abs=1e-12)
