"""Zero-shot visualisation of point features: PCA colours, a similarity map, k-means and label colours
painted on the original points, written as coloured PLY files and rendered side by side in one PNG.

Used by ``featviz points`` and the point demo. Reading scenes: :func:`pointprobe.data.points.load_points`
(preprocessed folder, raw ScanNet folder, ``.ply``, ``.npy`` / ``.npz``). Features:
:func:`load_point_encoder` + :func:`point_features`, :func:`zscored_input_features` (no encoder) or
:func:`cache_features`. Pictures: :func:`visualize_points` / :func:`render_feature_panels`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import ConfigError, InputError
from pointprobe.data.points import PointInput, labels_or_none
from pointprobe.data.scannet import SCANNET20_PALETTE

__all__ = [
    "parse_xyz",
    "nearest_point",
    "load_point_encoder",
    "point_features",
    "zscored_input_features",
    "cache_features",
    "write_colored_ply",
    "PointVizResult",
    "visualize_points",
    "render_feature_panels",
]

_GREY = np.array([0.62, 0.62, 0.62], dtype=np.float32)


def parse_xyz(text: str) -> np.ndarray:
    """``"x,y,z"`` -> (3,) float64; ``ConfigError`` for anything else."""
    try:
        v = np.array([float(t) for t in text.replace(" ", "").split(",")], dtype=np.float64)
    except ValueError:
        raise ConfigError(f"--query must be three numbers x,y,z, got {text!r}") from None
    if v.shape != (3,) or not np.isfinite(v).all():
        raise ConfigError(f"--query must be three finite numbers x,y,z, got {text!r}")
    return v


def nearest_point(coord: np.ndarray, xyz: Sequence[float] | np.ndarray) -> int:
    """Index of the point of ``coord`` (N, 3) nearest to ``xyz``."""
    d = ((np.asarray(coord, dtype=np.float64) - np.asarray(xyz, dtype=np.float64)[None]) ** 2).sum(axis=1)
    return int(np.argmin(d))


# ------------------------------------------------------------------------------------------ features
def load_point_encoder(
    checkpoint: str | os.PathLike | None = None,
    name: str | None = None,
    random_init: bool = False,
    seed: int = 0,
    device: str = "cpu",
    config: dict | None = None,
) -> tuple[Any, dict[str, Any]]:
    """(model or None, record). ``checkpoint``: a file or release name; ``name`` with ``random_init``:
    a randomly initialised encoder (seeded); ``name == "raw"``: no model (input features).

    The record holds ``encoder``, ``checkpoint`` and ``checkpoint_sha256`` (``random:<seed>`` / ``none``).
    Encoders are built as ``pointprobe extract`` builds them (``pointprobe.models.build_encoder``).
    """
    import torch

    from pointprobe.models.registry import PointEncoderConfig, build_encoder

    if checkpoint is None and name is None:
        raise ConfigError(
            "choose an encoder: checkpoint=FILE, name=NAME with random_init=True, or name='raw'"
        )
    if checkpoint is None and name != "raw" and not random_init:
        checkpoint = name  # a release name (sonata, sonata_small) resolved from the local caches / hub
    spec = PointEncoderConfig(name=name or "ptv3", checkpoint=None if checkpoint is None else str(checkpoint),
                            seed=seed, config=dict(config or {}))
    model, rec = build_encoder(spec, torch.device(device))
    if model is not None and checkpoint is not None:
        rec.checkpoint = getattr(model, "checkpoint_path", rec.checkpoint)
    record = {"encoder": name or rec.name, "checkpoint": rec.checkpoint,
              "checkpoint_sha256": rec.checkpoint_sha256}
    if model is not None:
        record["config"] = rec.config
    return model, record


def point_features(
    model: Any,
    pts: PointInput,
    levels: int | None = None,
    grid_size: float = 0.02,
    device: str | None = None,
    progress: bool = False,
    align: str = "world",
) -> np.ndarray:
    """(N, D) float32 features of every input point (``encode_points`` with the official preprocessing;
    ``align``: voxel borders, ``"world"`` as the Sonata release, see ``encode_points``)."""
    import torch

    from pointprobe.models import encode_points

    with torch.no_grad():
        f = encode_points(
            model,
            pts.coord,
            pts.color,
            pts.normal,
            levels=levels,
            grid_size=grid_size,
            device=device,
            source=pts.source,
            progress=progress,
            align=align,
        )
    return f.float().cpu().numpy()


def zscored_input_features(pts: PointInput) -> np.ndarray:
    """Input features without an encoder, for pictures: z-scored columns of (centred coord, colour / 255,
    normal) (not ``pointprobe.extract.raw_features``, the 9 unscaled channels a ``raw`` cache stores)."""
    parts = [pts.coord - pts.coord.mean(axis=0)]
    if pts.color is not None:
        parts.append(pts.color.astype(np.float64) / 255.0)
    if pts.normal is not None:
        parts.append(pts.normal.astype(np.float64))
    f = np.concatenate(parts, axis=1)
    std = f.std(axis=0)
    return ((f - f.mean(axis=0)) / np.where(std > 1e-12, std, 1.0)).astype(np.float32)


def cache_features(
    cache_dir: str | os.PathLike, item: str, pts: PointInput
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """(features (N, D), labels (N,) or None, record) of ``item`` in a feature cache, mapped to the N
    scene points: directly when the row counts match, through an ``inverse`` (N,) array, or from an
    ``index`` array (kept rows) by nearest neighbour."""
    from common.cache import FeatureCache

    cache = FeatureCache(cache_dir)
    arrays = cache[item]
    feats = np.asarray(arrays["features"], dtype=np.float32)
    labels = arrays.get("labels")
    n = len(pts)
    if len(feats) == n:
        per_point, lab = feats, labels
    elif "inverse" in arrays and len(arrays["inverse"]) == n:
        inv = np.asarray(arrays["inverse"], dtype=np.int64)
        if inv.min() < 0 or inv.max() >= len(feats):
            raise InputError(
                cache_dir, f"item {item!r}: inverse indexes outside the {len(feats)} feature rows"
            )
        per_point = feats[inv]
        lab = None if labels is None else np.asarray(labels)[inv]
    elif "index" in arrays and len(arrays["index"]) == len(feats):
        from scipy.spatial import cKDTree

        idx = np.asarray(arrays["index"], dtype=np.int64)
        if idx.min() < 0 or idx.max() >= n:
            raise InputError(cache_dir, f"item {item!r}: index refers to points beyond the scene's {n}")
        _, nn = cKDTree(pts.coord[idx]).query(pts.coord, k=1)
        per_point = feats[nn]
        lab = None if labels is None else np.asarray(labels)[nn]
    else:
        raise InputError(
            cache_dir,
            f"item {item!r} has {len(feats)} feature rows but the scene {pts.source} "
            f"has {n} points, and no 'inverse' or 'index' array maps one to the other",
        )
    key = cache.key
    record = {
        "encoder": key.encoder,
        "checkpoint": None,
        "checkpoint_sha256": key.checkpoint_sha256,
        "cache": str(cache_dir),
        "item": item,
        "cache_config_hash": key.config_hash,
    }
    return np.ascontiguousarray(per_point), labels_or_none(lab), record


# ------------------------------------------------------------------------------------------- outputs
def write_colored_ply(
    path: str | os.PathLike,
    coord: np.ndarray,
    colors: np.ndarray,
    scalars: dict[str, np.ndarray] | None = None,
) -> Path:
    """Binary PLY with x, y, z (float32), red, green, blue (uchar) and optional per-point ``scalars``."""
    from common.render import to_uint8
    from pointprobe.data.ply import write_ply

    c = to_uint8(colors)
    vertex: dict[str, np.ndarray] = {
        "x": coord[:, 0].astype(np.float32),
        "y": coord[:, 1].astype(np.float32),
        "z": coord[:, 2].astype(np.float32),
        "red": np.ascontiguousarray(c[:, 0]),
        "green": np.ascontiguousarray(c[:, 1]),
        "blue": np.ascontiguousarray(c[:, 2]),
    }
    for k, v in (scalars or {}).items():
        v = np.asarray(v)
        vertex[k] = v.astype(np.int32) if v.dtype.kind in "iu" else v.astype(np.float32)
    return write_ply(path, vertex)


@dataclass
class PointVizResult:
    """What :func:`visualize_points` wrote and chose."""

    png: Path
    plys: dict[str, Path]
    query_index: int | None
    backend: str
    message: str | None = None
    panels: list[str] = field(default_factory=list)
    views: list[str] = field(default_factory=list)
    query_xyz: tuple[float, float, float] | None = None
    colorbar: Any = None  # common.render.ColorBar of the similarity panel


def _legend(labels_sets: Sequence[np.ndarray], palette: np.ndarray, names: Sequence[str] | None) -> list:
    present = sorted({int(v) for lab in labels_sets for v in np.unique(lab) if 0 <= v < len(palette)})
    pal = palette.astype(np.float32) / (255.0 if palette.max(initial=0) > 1 else 1.0)
    return [(names[i] if names and i < len(names) else str(i), pal[i]) for i in present]


def visualize_points(
    coord: np.ndarray,
    color: np.ndarray | None,
    feats: np.ndarray,
    out_dir: str | os.PathLike,
    labels: np.ndarray | None = None,
    pred: np.ndarray | None = None,
    query: int | Sequence[float] | np.ndarray | None = None,
    kmeans: int = 0,
    title: str = "features",
    seed: int = 0,
    size: tuple[int, int] = (480, 360),
    views: Sequence[Any] | None = None,
    point_size: float | None = None,
    palette: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    cmap: str = "coolwarm",
    write_ply: bool = True,
    quiet: bool = False,
) -> PointVizResult:
    """Colour ``feats`` (N, D) on the points ``coord`` (N, 3): input | PCA | similarity | [k-means] |
    [labels] | [predicted]; write ``<panel>.ply`` files and ``panels.png`` (one row per viewpoint).

    ``query``: a point index or an (x, y, z) position (nearest point); None: the point nearest the
    bounding-box centre. ``color`` (N, 3) uint8 0-255 or float 0-1 (None: grey). ``labels`` / ``pred``
    use the ScanNet-20 palette and names unless ``palette`` / ``class_names`` are given (-1: grey).
    """
    from common.pca import kmeans as run_kmeans
    from common.pca import label_colors, pca_colors, similarity, similarity_colors
    from common.render import DEFAULT_VIEWS, compose_grid, render_or_fallback, similarity_colorbar

    out_dir = Path(out_dir)
    coord = np.asarray(coord, dtype=np.float64)
    feats = np.asarray(feats.detach().cpu() if hasattr(feats, "detach") else feats, dtype=np.float32)
    n = len(coord)
    if coord.ndim != 2 or coord.shape[1] != 3 or n == 0:
        raise InputError(None, f"coord must be a non-empty (N, 3) array, got {coord.shape}")
    if feats.ndim != 2 or len(feats) != n:
        raise InputError(None, f"features have shape {feats.shape}, expected ({n}, D) for {n} points")
    if not np.isfinite(feats).all():
        raise InputError(
            None, f"features hold NaN/inf in {int((~np.isfinite(feats)).any(1).sum())} of {n} rows"
        )
    if query is None:
        qi = nearest_point(coord, (coord.min(0) + coord.max(0)) / 2)
    elif isinstance(query, (int, np.integer)):
        qi = int(query)
        if not 0 <= qi < n:
            raise ConfigError(f"query index {qi} is outside the scene's {n} points")
    else:
        qi = nearest_point(coord, query)
    pal = SCANNET20_PALETTE if palette is None else np.asarray(palette)
    if class_names is None and palette is None:
        from pointprobe.data.scannet import CLASS_LABELS_20

        class_names = CLASS_LABELS_20

    panels: list[tuple[str, str, np.ndarray, dict]] = []  # (key, title, colours, ply scalars)
    in_col = np.tile(_GREY, (n, 1)) if color is None else np.asarray(color)
    in_col = in_col.astype(np.float32) / 255.0 if np.asarray(in_col).dtype.kind in "iu" else in_col
    panels.append(("input", "input colour" if color is not None else "input (no colour)", in_col, {}))
    panels.append(("pca", "PCA", pca_colors(feats, seed=seed), {}))
    sim = similarity(feats, qi)
    qx, qy, qz = (float(v) for v in coord[qi])
    panels.append(
        ("similarity", f"similarity to ({qx:.2f}, {qy:.2f}, {qz:.2f})", similarity_colors(sim, cmap=cmap),
         {"similarity": sim})
    )
    colorbar = similarity_colorbar(sim, cmap, f"cosine similarity to the query point ({qx:.2f}, {qy:.2f}, "
                                   f"{qz:.2f}), marked in every panel")
    if kmeans and kmeans > 0:
        km, _ = run_kmeans(feats, kmeans, seed=seed)
        from common.pca import categorical_palette

        panels.append(("kmeans", f"k-means (k={kmeans})", categorical_palette(kmeans)[km], {"label": km}))
    legend_sets = []
    for key, lab, ttl in (("labels", labels, "ground truth"), ("pred", pred, "predicted")):
        if lab is None:
            continue
        lab = np.asarray(lab).reshape(-1).astype(np.int64)
        if len(lab) != n:
            raise InputError(None, f"{key} has {len(lab)} entries for {n} points")
        use_pal = pal if lab.max(initial=-1) < len(pal) else None
        panels.append((key, ttl, label_colors(lab, use_pal), {"label": lab}))
        if use_pal is not None:
            legend_sets.append(lab)

    plys: dict[str, Path] = {}
    if write_ply:
        for key, _, col, scalars in panels:
            plys[key] = write_colored_ply(out_dir / f"{key}.ply", coord, col, scalars)
    res = render_or_fallback(
        coord,
        [p[2] for p in panels],
        views or DEFAULT_VIEWS,
        size,
        point_size,
        markers=coord[qi : qi + 1],
        quiet=quiet,
    )
    cells = [[res.images[c, v] for c in range(len(panels))] for v in range(res.images.shape[1])]
    legend = _legend(legend_sets, pal, class_names) if legend_sets else None
    png = out_dir / "panels.png"
    compose_grid(
        cells, png, col_titles=[p[1] for p in panels], row_titles=res.views, title=title, legend=legend,
        colorbar=colorbar,
    )
    return PointVizResult(png, plys, qi, res.backend, res.message, [p[0] for p in panels], res.views,
                          (qx, qy, qz), colorbar)


def render_feature_panels(
    coord: np.ndarray,
    color: np.ndarray | None,
    feats: np.ndarray,
    out_dir: str | os.PathLike,
    labels: np.ndarray | None = None,
    query: int | Sequence[float] | None = None,
    title: str = "features",
    **kwargs: Any,
) -> Path:
    """PCA / similarity / label panels of per-point features in ``out_dir`` (PLYs + ``panels.png``);
    returns the PNG path. Keyword arguments go to :func:`visualize_points`."""
    return visualize_points(
        coord, color, feats, out_dir, labels=labels, query=query, title=title, **kwargs
    ).png
