"""Colourings of feature vectors shared by every visualisation: PCA, similarity maps, k-means, labels.

- PCA (as in the Sonata release demo): ``torch.pca_lowrank(feat, q=6, center=True)``, projection,
  rgb = 0.6 * PC1-3 + 0.4 * PC4-6, min-max per channel, times ``brightness`` (1.2), clamped to [0, 1].
  :func:`fit_pca` / :func:`project` and :class:`PCAColorMap` fit once and colour many arrays
  consistently (a video's frames). The random projection of ``pca_lowrank`` is seeded and each
  component's sign is fixed (its largest-magnitude loading is positive), so colours are reproducible.
- Similarity: cosine similarity to a query point / vector, mapped to [0, 1] with thresholds taken
  from the sorted similarities (the top 2 % are hot, the top 10 % warm, the bottom 50 % cold), then a
  diverging colormap.
- :func:`kmeans` / :func:`kmeans_colors`: cosine k-means in torch (k-means++ seeding, vectorised).
- :func:`label_colors`: a palette lookup with a colour for ignored (-1) labels.

Every colour function returns a float32 numpy array (N, 3) in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "PCAFit",
    "PCAColorMap",
    "fit_pca",
    "project",
    "mix_components",
    "pca_colors",
    "similarity",
    "similarity_heat",
    "similarity_colors",
    "kmeans",
    "kmeans_colors",
    "categorical_palette",
    "label_colors",
]

ArrayLike = torch.Tensor | np.ndarray


def _as_feat(feat: ArrayLike, name: str = "feat") -> torch.Tensor:
    """(N, D) float32 tensor (2-D required, finite values required)."""
    t = feat if isinstance(feat, torch.Tensor) else torch.from_numpy(np.asarray(feat))
    t = t.detach()
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) array, got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows)")
    t = t.float()
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).any(dim=1).sum())
        raise ValueError(f"{name} holds NaN/inf in {bad} of {t.shape[0]} rows")
    return t


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32, copy=False)


# ------------------------------------------------------------------------------------------------ PCA
class PCAFit(NamedTuple):
    """Mean (D,) and components (D, q) (columns, unit length, sign-fixed) of a PCA."""

    mean: torch.Tensor
    components: torch.Tensor


def _fix_signs(components: torch.Tensor) -> torch.Tensor:
    """Flip each column so that its largest-magnitude entry is positive."""
    idx = components.abs().argmax(dim=0)
    signs = torch.sign(components[idx, torch.arange(components.shape[1], device=components.device)])
    signs[signs == 0] = 1
    return components * signs


def fit_pca(
    feat: ArrayLike,
    q: int = 6,
    center: bool = True,
    seed: int = 0,
    niter: int = 4,
    max_rows: int | None = 500_000,
) -> PCAFit:
    """Principal components of ``feat`` (N, D) with ``torch.pca_lowrank`` (seeded, sign-fixed).

    Components beyond ``min(N, D)`` are zero columns, so ``components`` is always (D, q). Rows beyond
    ``max_rows`` are subsampled (seeded) for the fit only.
    """
    x = _as_feat(feat)
    n, d = x.shape
    if n > (max_rows or n):
        g = torch.Generator().manual_seed(seed)
        x = x[torch.randperm(n, generator=g)[:max_rows].to(x.device)]
        n = x.shape[0]
    mean = x.mean(dim=0) if center else torch.zeros(d, dtype=x.dtype, device=x.device)
    k = min(q, n, d)
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if x.device.type == "cuda":
            torch.cuda.manual_seed(seed)
        _, _, v = torch.pca_lowrank(x - mean, q=k, center=False, niter=niter)
    comps = torch.zeros(d, q, dtype=x.dtype, device=x.device)
    comps[:, :k] = _fix_signs(v[:, :k])
    return PCAFit(mean, comps)


def project(feat: ArrayLike, mean: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
    """(N, q) coordinates of ``feat`` on the principal ``components`` (after subtracting ``mean``)."""
    x = _as_feat(feat).to(components.device)
    return (x - mean) @ components


def mix_components(proj: torch.Tensor) -> torch.Tensor:
    """rgb = 0.6 * PC1-3 + 0.4 * PC4-6 (with fewer than 6 components: PC1-3, zero-padded)."""
    q = proj.shape[1]
    if q < 3:
        proj = torch.cat([proj, proj.new_zeros(proj.shape[0], 3 - q)], dim=1)
    if q >= 6:
        return 0.6 * proj[:, :3] + 0.4 * proj[:, 3:6]
    return proj[:, :3]


@dataclass
class PCAColorMap:
    """A PCA colouring fitted once (components and per-channel range) and applied to any features.

    ``PCAColorMap.fit(feat)(feat)`` equals ``pca_colors(feat)``; applying the same map to other arrays
    (the frames of a video, a second scene) gives them comparable colours.
    """

    mean: torch.Tensor
    components: torch.Tensor
    lo: torch.Tensor  # (3,) per-channel minimum of the mixed projection over the fit data
    hi: torch.Tensor  # (3,) per-channel maximum
    brightness: float = 1.2

    @classmethod
    def fit(
        cls, feat: ArrayLike, q: int = 6, brightness: float = 1.2, center: bool = True, seed: int = 0
    ) -> PCAColorMap:
        """Fit on ``feat`` (N, D): components, then the colour range over all of ``feat``."""
        fit = fit_pca(feat, q=q, center=center, seed=seed)
        rgb = mix_components(project(feat, *fit))
        return cls(fit.mean, fit.components, rgb.min(dim=0).values, rgb.max(dim=0).values, float(brightness))

    def __call__(self, feat: ArrayLike) -> np.ndarray:
        """(N, 3) float32 colours in [0, 1] of ``feat`` (N, D)."""
        rgb = mix_components(project(feat, self.mean, self.components))
        rgb = (rgb - self.lo) / torch.clamp(self.hi - self.lo, min=1e-6)
        return _to_numpy(torch.clamp(rgb * self.brightness, 0.0, 1.0))


def pca_colors(
    feat: ArrayLike, q: int = 6, brightness: float = 1.2, center: bool = True, seed: int = 0
) -> np.ndarray:
    """Sonata-demo PCA colours (N, 3) float32 in [0, 1] of features (N, D); deterministic for a seed."""
    return PCAColorMap.fit(feat, q=q, brightness=brightness, center=center, seed=seed)(feat)


# ----------------------------------------------------------------------------------------- similarity
def similarity(feat: ArrayLike, query: int | ArrayLike) -> np.ndarray:
    """Cosine similarity (N,) float32 of every row of ``feat`` to row ``query`` or to a (D,) vector."""
    x = F.normalize(_as_feat(feat), dim=1)
    if isinstance(query, (int, np.integer)):
        if not -x.shape[0] <= int(query) < x.shape[0]:
            raise IndexError(f"query index {int(query)} out of range for {x.shape[0]} rows")
        q = x[int(query)]
    else:
        qt = query if isinstance(query, torch.Tensor) else torch.from_numpy(np.asarray(query))
        qt = qt.detach().float().reshape(-1).to(x.device)
        if qt.shape[0] != x.shape[1]:
            raise ValueError(f"query vector has {qt.shape[0]} dims, features have {x.shape[1]}")
        q = F.normalize(qt, dim=0)
    return _to_numpy(x @ q)


def similarity_heat(
    sim: ArrayLike, peak: float = 0.02, highlight: float = 0.1, reject: float = 0.5
) -> np.ndarray:
    """Map similarities (N,) to [0, 1] with thresholds from their sorted values (Sonata demo).

    ``hot`` = the value at the top ``peak`` fraction, ``warm`` = at the top ``highlight`` fraction,
    ``cold`` = at the bottom ``reject`` fraction. Values above ``warm`` go to
    sigmoid((s - warm) / (hot - warm)) in [0.5, 1); values below to 0.9 * sigmoid((s - warm) / (warm - cold))
    in [0, 0.45). The map is monotonic, so the most similar point gets the largest value.
    """
    s = torch.as_tensor(np.asarray(sim, dtype=np.float32)).reshape(-1)
    n = s.shape[0]
    if n == 0:
        raise ValueError("similarity array is empty")
    srt = torch.sort(s, descending=True).values
    hot = srt[min(int(n * peak), n - 1)]
    warm = srt[min(int(n * highlight), n - 1)]
    cold = srt[n - int(n * reject)] if int(n * reject) > 0 else srt[-1]
    eps = 1e-6
    x = s - warm
    out = torch.empty_like(s)
    pos = x > 0
    out[pos] = torch.sigmoid(x[pos] / max(float(hot - warm), eps))
    out[~pos] = 0.9 * torch.sigmoid(x[~pos] / max(float(warm - cold), eps))
    return out.numpy().astype(np.float32)


def _cmap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]


def similarity_colors(
    sim: ArrayLike, cmap: str = "coolwarm", peak: float = 0.02, highlight: float = 0.1, reject: float = 0.5
) -> np.ndarray:
    """(N, 3) colours of similarities: :func:`similarity_heat` through a diverging colormap
    (``coolwarm``; the Sonata demo uses ``Spectral_r``)."""
    heat = similarity_heat(sim, peak, highlight, reject)
    return np.asarray(_cmap(cmap)(heat)[:, :3], dtype=np.float32)


# ------------------------------------------------------------------------------------------- k-means
def kmeans(
    feat: ArrayLike,
    k: int,
    seed: int = 0,
    max_iter: int = 100,
    tol: float = 1e-5,
    max_rows: int | None = 200_000,
) -> tuple[np.ndarray, torch.Tensor]:
    """Cosine k-means: (labels (N,) int64, unit centroids (k, D)); clusters are ordered by size.

    k-means++ seeding with a seeded generator; ``max_rows`` rows (seeded subsample) are used to fit,
    then every row is assigned to its most similar centroid. Empty clusters are re-seeded with the
    row farthest from its centroid.
    """
    x = F.normalize(_as_feat(feat), dim=1)
    n = x.shape[0]
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, n)
    g = torch.Generator().manual_seed(seed)
    fit_x = x[torch.randperm(n, generator=g)[:max_rows].to(x.device)] if max_rows and n > max_rows else x
    m = fit_x.shape[0]
    # k-means++ on cosine distance (1 - cos)
    first = int(torch.randint(m, (1,), generator=g))
    cent = [fit_x[first]]
    dist = (1 - fit_x @ cent[0]).clamp_min(0)
    for _ in range(1, k):
        p = dist.cpu().double()
        idx = (
            int(torch.multinomial(p / p.sum(), 1, generator=g))
            if float(p.sum()) > 0
            else int(torch.randint(m, (1,), generator=g))
        )
        cent.append(fit_x[idx])
        dist = torch.minimum(dist, (1 - fit_x @ fit_x[idx]).clamp_min(0))
    c = torch.stack(cent)
    prev = None
    for _ in range(max_iter):
        sim = fit_x @ c.T  # (m, k)
        best, lab = sim.max(dim=1)
        sums = torch.zeros_like(c).index_add_(0, lab, fit_x)
        counts = torch.bincount(lab, minlength=k)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):
            far = torch.argsort(best)[: len(empty)]
            sums[empty] = fit_x[far]
        c = F.normalize(sums, dim=1)
        obj = float(best.mean())
        if prev is not None and abs(obj - prev) < tol:
            break
        prev = obj
    labels = torch.cat([(chunk @ c.T).argmax(dim=1) for chunk in x.split(262_144)])
    counts = torch.bincount(labels, minlength=k)
    order = torch.argsort(
        -counts.double() * (k + 1) + torch.arange(k, dtype=torch.float64, device=counts.device)
    )
    rank = torch.empty_like(order)
    rank[order] = torch.arange(k, device=order.device)
    return rank[labels].cpu().numpy().astype(np.int64), c[order]


def categorical_palette(n: int) -> np.ndarray:
    """(n, 3) float32 distinct colours (tab10, then tab20, then evenly spaced hues)."""
    if n <= 10:
        return np.asarray(_cmap("tab10").colors[:n], dtype=np.float32)
    if n <= 20:
        return np.asarray(_cmap("tab20").colors[:n], dtype=np.float32)
    import matplotlib.colors as mcolors

    hsv = np.stack([np.arange(n) / n, np.full(n, 0.75), np.where(np.arange(n) % 2, 0.95, 0.7)], axis=1)
    return mcolors.hsv_to_rgb(hsv).astype(np.float32)


def kmeans_colors(feat: ArrayLike, k: int, seed: int = 0) -> np.ndarray:
    """(N, 3) colours of cosine k-means segments (largest cluster first in the palette)."""
    labels, _ = kmeans(feat, k, seed=seed)
    return categorical_palette(k)[labels]


def label_colors(
    labels: ArrayLike,
    palette: Sequence[Sequence[float]] | np.ndarray | None = None,
    ignore_color: Sequence[float] = (0.55, 0.55, 0.55),
) -> np.ndarray:
    """(N, 3) colours of integer labels; ``palette`` (C, 3) in [0, 1] or [0, 255] (uint8/ints);
    labels < 0 or >= C get ``ignore_color``. Without a palette, a categorical one is made."""
    lab = (
        np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1).astype(np.int64)
    )
    if palette is None:
        palette = categorical_palette(max(int(lab.max(initial=-1)) + 1, 1))
    pal = np.asarray(palette, dtype=np.float32)
    if pal.max(initial=0) > 1.0:
        pal = pal / 255.0
    out = np.empty((lab.shape[0], 3), dtype=np.float32)
    out[:] = np.asarray(ignore_color, dtype=np.float32)
    ok = (lab >= 0) & (lab < len(pal))
    out[ok] = pal[lab[ok]]
    return out
