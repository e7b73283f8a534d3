"""Probes on frozen features: multi-head linear (``linear``), L-BFGS logistic regression (``logreg``),
cosine kNN (``knn``) and a V-JEPA-style attentive probe (``attentive``).

The encoder is never trained by a probe: features come from the cache, and code that computes them
live calls :func:`assert_frozen` on the encoder first.
"""

from __future__ import annotations

import torch

from common.errors import ProbeSuiteError


class NotFrozenError(ProbeSuiteError):
    """An encoder that must be frozen is in training mode or has trainable parameters."""


def assert_frozen(module: torch.nn.Module, name: str | None = None) -> None:
    """Raise :class:`NotFrozenError` if ``module`` (or a sub-module) is in training mode or any of its
    parameters requires grad. Call ``module.eval().requires_grad_(False)`` to freeze an encoder."""
    label = name or type(module).__name__
    training = [n or "<root>" for n, m in module.named_modules() if m.training]
    if training:
        raise NotFrozenError(
            f"{label} is in training mode ({len(training)} module(s), e.g. {training[0]}); "
            "call .eval() before probing"
        )
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    if trainable:
        raise NotFrozenError(
            f"{label} has {len(trainable)} parameter(s) that require grad "
            f"(e.g. {trainable[0]}); call .requires_grad_(False)"
        )


# re-exports (the submodules do not import this package's namespace, so there is no cycle)
from common.probes.attentive import (  # noqa: E402
    AttentiveConfig,
    AttentiveProbe,
    AttentiveProbeResult,
    evaluate_attentive_probe,
    load_attentive_probe,
    predict_attentive,
    save_attentive_probe,
    train_attentive_probe,
)
from common.probes.knn import KnnConfig, evaluate_knn, knn_votes  # noqa: E402
from common.probes.linear import (  # noqa: E402
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
from common.probes.logreg import LogRegConfig, fit_logreg, train_logreg_probe  # noqa: E402

__all__ = [
    "NotFrozenError",
    "assert_frozen",
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
