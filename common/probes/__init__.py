"""Probes on frozen features: multi-head linear (``linear``), L-BFGS logistic regression (``logreg``),
cosine kNN (``knn``) and a V-JEPA-style attentive probe (``attentive``), one table of them
(:data:`PROBES`, :mod:`common.probes.registry`: the contract).

Modules: ``data`` (ProbeData: the cached training source), ``normalize`` (feature statistics), ``engine``
(batches, the vectorised head grid, schedules, scoring: public, explicit parameters), one module per
probe, ``registry`` (the contract and the table), ``notes`` (small-data warnings).

The encoder is never trained by a probe: features come from the cache, and code that computes them
live freezes the encoder with :func:`common.freeze.freeze` (checked by ``common.freeze.assert_frozen``).
"""

from __future__ import annotations

# re-exports (the submodules do not import this package's namespace, so there is no cycle)
from common.probes.attentive import (
    AttentiveConfig,
    AttentiveProbe,
    AttentiveProbeResult,
    evaluate_attentive_probe,
    load_attentive_probe,
    predict_attentive,
    save_attentive_probe,
    train_attentive_probe,
)
from common.probes.knn import KnnConfig, KnnProbeResult, evaluate_knn, fit_knn, knn_votes
from common.probes.linear import (
    LinearProbeConfig,
    LinearProbeResult,
    ProbeData,
    apply_normalizer,
    evaluate_linear_probe,
    fit_normalizer,
    load_probe,
    predict,
    save_probe,
    train_linear_probe,
)
from common.probes.logreg import LogRegConfig, fit_logreg, train_logreg_probe
from common.probes.registry import PROBES, ProbeResult, ProbeSpec, get_probe, load_probe_result

__all__ = [
    "PROBES",
    "ProbeSpec",
    "ProbeResult",
    "get_probe",
    "load_probe_result",
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
    "LogRegConfig",
    "fit_logreg",
    "train_logreg_probe",
    "KnnConfig",
    "KnnProbeResult",
    "fit_knn",
    "knn_votes",
    "evaluate_knn",
    "AttentiveProbe",
    "AttentiveConfig",
    "AttentiveProbeResult",
    "train_attentive_probe",
    "evaluate_attentive_probe",
    "predict_attentive",
    "save_attentive_probe",
    "load_attentive_probe",
]
