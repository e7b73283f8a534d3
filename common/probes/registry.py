"""One contract for every probe and one table of them, used by ``pointprobe probe`` and ``videoprobe probe``.

A probe is ``fit(train, val, cfg, class_names=None) -> result``: ``train`` / ``val`` are
:class:`~common.probes.data.ProbeData` (``val`` None: the probe holds out part of ``train`` by group,
or needs none), ``cfg`` an instance of the probe's config class. The result (:class:`ProbeResult`)
scores new rows (``evaluate``), gives per-group class scores for per-video predictions
(``group_scores``), says what it chose (``summary``), saves and loads itself through
``common.checkpoint`` (``save`` / ``load``) and records how many parameters it trained
(``trainable_params``).

A new cache-based probe is one module in ``common/probes/`` (its config dataclass, its ``fit`` and
result class, built on :mod:`common.probes.engine`) and one entry in :data:`PROBES`; both commands
then accept its name and read its settings from the config section of that name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from common.errors import CheckpointError, ConfigError
from common.probes.attentive import AttentiveConfig, AttentiveProbeResult, train_attentive_probe
from common.probes.data import ProbeData
from common.probes.knn import KnnConfig, KnnProbeResult, fit_knn
from common.probes.linear import LinearProbeConfig, LinearProbeResult, train_linear_probe
from common.probes.logreg import LogRegConfig, train_logreg_probe

__all__ = ["ProbeResult", "ProbeSpec", "PROBES", "get_probe", "configure", "load_probe_result"]


@runtime_checkable
class ProbeResult(Protocol):
    """What every probe's ``fit`` returns."""

    config: dict
    num_classes: int

    @property
    def trainable_params(self) -> int:
        """Number of parameters the probe trained and keeps (0 for kNN)."""

    def evaluate(self, data: ProbeData, view_average: bool | None = None, device: str = "cpu") -> dict:
        """Scores on ``data`` (fractions: top1/top5/mean_class, or mIoU/mAcc/allAcc for segmentation)."""

    def group_scores(self, data: ProbeData) -> np.ndarray:
        """(G, K) class scores summed over each group's rows, groups in sorted order."""

    def summary(self) -> dict:
        """What was chosen / built (``setting``: one short line for tables) besides the scores."""

    def save(self, path: str | Path) -> Path: ...

    @classmethod
    def load(cls, path: str | Path) -> ProbeResult: ...


FitFn = Callable[[ProbeData, "ProbeData | None", Any, "Sequence[str] | None"], ProbeResult]


@dataclass(frozen=True)
class ProbeSpec:
    """One row of :data:`PROBES`."""

    config_class: type  # the dataclass of its settings (a config section of that name in each command)
    fit: FitFn  # fit(train, val, cfg, class_names) -> result
    result_class: type  # has .load(path)
    rows: str = "features"  # "features": rows (n, D) | "tokens": rows (n, L, D)
    tasks: tuple[str, ...] = ("classification",)
    seeded: bool = True  # the seed changes the result (kNN: no randomness, run once)
    doc: str = ""


PROBES: dict[str, ProbeSpec] = {
    "linear": ProbeSpec(LinearProbeConfig, train_linear_probe, LinearProbeResult,
                        tasks=("classification", "segmentation"),
                        doc="DINOv2-style lr x wd grid of linear heads, best head on held-out groups"),
    "logreg": ProbeSpec(LogRegConfig, train_logreg_probe, LinearProbeResult,
                        tasks=("classification", "segmentation"),
                        doc="L-BFGS logistic regression, C swept coarse-to-fine on held-out groups"),
    "knn": ProbeSpec(KnnConfig, fit_knn, KnnProbeResult, seeded=False,
                     doc="cosine kNN, exp(sim / T) votes summed over a group's rows"),
    "attentive": ProbeSpec(AttentiveConfig, train_attentive_probe, AttentiveProbeResult, rows="tokens",
                           doc="V-JEPA-style attentive probe (one learned query) on token rows"),
}


def get_probe(name: str, task: str | None = None) -> ProbeSpec:
    """The table entry of ``name``; ``ConfigError`` naming the known probes (of ``task``) otherwise."""
    known = [n for n, s in PROBES.items() if task is None or task in s.tasks]
    if name not in known:
        what = f"probe type for {task}" if task else "probe type"
        raise ConfigError(f"unknown {what} {name!r}; known: {', '.join(known)}")
    return PROBES[name]


def configure(cfg: Any, **settings: Any) -> Any:
    """A copy of a probe config with the run-wide ``settings`` (seed, device, progress, num_classes,
    task, view_average...) applied where the config class has such a field."""
    names = {f.name for f in dataclasses.fields(cfg)}
    return dataclasses.replace(cfg, **{k: v for k, v in settings.items() if k in names})


def load_probe_result(path: str | Path) -> ProbeResult:
    """Load any probe file written by a table probe's ``save`` (the file's format picks the class)."""
    errors = []
    for cls in dict.fromkeys(s.result_class for s in PROBES.values()):
        try:
            return cls.load(path)
        except CheckpointError as e:
            errors.append(str(e))
            if "no such probe file" in str(e):
                break
    raise CheckpointError(errors[0] if len(errors) == 1 else f"{path}: not a probesuite probe file")
