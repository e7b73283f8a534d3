"""Feature normalisation of the linear probes: statistics of the training rows (:func:`fit_normalizer`)
and their application (:func:`apply_normalizer`); modes ``none``, ``standardize``, ``whiten``, ``l2``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import torch

from common.errors import CheckpointError, ConfigError, InputError
from common.probes.data import ProbeData

__all__ = ["NORMALIZE_MODES", "fit_normalizer", "apply_normalizer"]

NORMALIZE_MODES = ("none", "standardize", "whiten", "l2")


def _blocks(
    data: ProbeData | torch.Tensor, window_rows: int, max_rows: int | None = None
) -> Iterator[torch.Tensor]:
    """Row blocks of the data; with ``max_rows``, blocks of a random subset of about that many rows."""
    if isinstance(data, torch.Tensor):
        x = data.reshape(-1, data.shape[-1])
        if max_rows is not None and x.shape[0] > max_rows:
            x = x[:: -(-x.shape[0] // max_rows)]
        for s in range(0, x.shape[0], 65536):
            yield x[s : s + 65536]
        return
    seen = 0
    rng = np.random.default_rng(0) if max_rows is not None and data.num_rows > max_rows else None
    for x, _, _ in data.iter_windows(min(window_rows, max_rows or window_rows), rng):
        yield torch.from_numpy(x).reshape(-1, data.dim)
        seen += x.shape[0]
        if max_rows is not None and seen >= max_rows:
            return


def fit_normalizer(
    data: ProbeData | torch.Tensor,
    mode: str,
    window_rows: int = 262144,
    eps: float = 1e-3,
    whiten_max_rows: int = 1_000_000,
) -> dict:
    """Normalisation statistics of the training rows.

    ``"none"`` / ``"l2"`` (per-row unit norm) need none; ``"standardize"`` gives per-dimension ``mean`` /
    ``std``; ``"whiten"`` gives ``mean`` and ``proj`` (D, D) = U diag(1 / sqrt(lambda + eps * mean(lambda)))
    from the eigen-decomposition of the covariance (PCA whitening: decorrelates the features, which
    makes the probe's optimisation well conditioned; the eps term keeps near-constant directions
    small); the covariance is estimated on at most ``whiten_max_rows`` rows (a random subset).
    Two passes over the rows, float64 accumulation of float32 blocks, no full-size copy.
    """
    if mode not in NORMALIZE_MODES:
        raise ConfigError(f"normalize must be one of {', '.join(NORMALIZE_MODES)}, not {mode!r}")
    if mode in ("none", "l2"):
        return {"mode": mode}
    n = 0
    total: torch.Tensor | None = None
    for xb in _blocks(data, window_rows):
        bsum = xb.float().sum(0).double()
        total = bsum if total is None else total + bsum
        n += xb.shape[0]
    if n == 0 or total is None:
        raise InputError(None, "no labelled rows to compute normalisation statistics from")
    mean = total / n
    m32 = mean.float().to(total.device)
    acc: torch.Tensor | None = None
    n2 = 0
    for xb in _blocks(data, window_rows, whiten_max_rows if mode == "whiten" else None):
        d = xb.float() - m32.to(xb.device)
        part = (d.t() @ d if mode == "whiten" else (d * d).sum(0)).double()
        acc = part if acc is None else acc + part
        n2 += xb.shape[0]
    assert acc is not None
    if mode == "standardize":
        std = (acc / n2).sqrt().clamp_min(1e-6)
        return {"mode": mode, "mean": mean.float().cpu(), "std": std.float().cpu()}
    cov = (acc / n2).cpu()
    lam, vecs = torch.linalg.eigh(cov)
    lam = lam.clamp_min(0)
    floor = eps * float(lam.mean()) + 1e-12
    proj = vecs / (lam + floor).sqrt()
    return {"mode": mode, "mean": mean.float().cpu(), "proj": proj.float()}


def apply_normalizer(x: torch.Tensor, norm: Mapping, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Apply statistics from :func:`fit_normalizer` (returns a new tensor unless mode is 'none').

    ``out_dtype=torch.bfloat16`` returns bfloat16 (the whitening matmul itself then runs in bfloat16).
    """
    if out_dtype is not None and out_dtype != torch.float32:
        if norm["mode"] == "whiten":
            xc = (x - norm["mean"].to(x.device)).to(out_dtype)
            return xc @ norm["proj"].to(device=x.device, dtype=out_dtype)
        return apply_normalizer(x, norm).to(out_dtype)
    mode = norm["mode"]
    if mode == "none":
        return x
    if mode == "l2":
        return torch.nn.functional.normalize(x, dim=-1)
    if mode == "standardize":
        return (x - norm["mean"].to(x.device)) / norm["std"].to(x.device)
    if mode == "whiten":
        return (x - norm["mean"].to(x.device)) @ norm["proj"].to(x.device)
    raise CheckpointError(f"unknown normalisation mode {mode!r}")

