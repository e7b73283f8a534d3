"""Zero-shot visualisation of point features: PCA colours, a similarity map, k-means and label colours
painted on the original points, written as coloured PLY files and rendered side by side in one PNG.

Used by ``featviz points`` and the point demo. Reading scenes: :func:`load_points` (preprocessed
folder, raw ScanNet folder, ``.ply``, ``.npy`` / ``.npz``). Features: :func:`load_point_encoder` +
:func:`point_features`, :func:`raw_features` or :func:`cache_features`. Pictures:
:func:`visualize_points` / :func:`render_feature_panels`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import ConfigError, InputError

__all__ = [
    "SCANNET20_PALETTE",
    "PointInput",
    "load_points",
    "parse_xyz",
    "nearest_point",
    "load_point_encoder",
    "point_features",
    "raw_features",
    "cache_features",
    "write_colored_ply",
    "PointVizResult",
    "visualize_points",
    "render_feature_panels",
]

# ScanNet benchmark colours of the 20 classes (wall, floor, cabinet, ..., otherfurniture), RGB 0-255.
SCANNET20_PALETTE = np.array(
    [
        (174, 199, 232),
        (152, 223, 138),
        (31, 119, 180),
        (255, 187, 120),
        (188, 189, 34),
        (140, 86, 75),
        (255, 152, 150),
        (214, 39, 40),
        (197, 176, 213),
        (148, 103, 189),
        (196, 156, 148),
        (23, 190, 207),
        (247, 182, 210),
        (219, 219, 141),
        (255, 127, 14),
        (158, 218, 229),
        (44, 160, 44),
        (112, 128, 144),
        (227, 119, 194),
        (82, 84, 163),
    ],
    dtype=np.uint8,
)
_GREY = np.array([0.62, 0.62, 0.62], dtype=np.float32)


@dataclass
class PointInput:
    """One scene's points: coord (N, 3) float64, color (N, 3) uint8 or None, normal (N, 3) or None,
    labels (N,) int64 (-1 = unknown) or None."""

    name: str
    coord: np.ndarray
    color: np.ndarray | None
    normal: np.ndarray | None
    labels: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return len(self.coord)


def _colors_uint8(c: np.ndarray | None, path: Path) -> np.ndarray | None:
    if c is None:
        return None
    c = np.asarray(c)
    if c.ndim != 2 or c.shape[1] < 3:
        raise InputError(path, f"color must be (N, 3), got {c.shape}")
    c = c[:, :3]
    if c.dtype.kind == "f":
        if not np.isfinite(c).all():
            raise InputError(path, "color holds NaN/inf")
        c = c * 255.0 if c.max(initial=0) <= 1.0 else c
    return np.clip(np.rint(c), 0, 255).astype(np.uint8)


def _labels_or_none(a: np.ndarray | None) -> np.ndarray | None:
    if a is None:
        return None
    a = np.asarray(a).reshape(-1).astype(np.int64)
    return a if (a >= 0).any() else None


def _from_arrays(name: str, path: Path, d: dict[str, np.ndarray]) -> PointInput:
    coord = np.asarray(d["coord"], dtype=np.float64)
    if coord.ndim != 2 or coord.shape[1] != 3:
        raise InputError(path, f"coord must be (N, 3), got {coord.shape}")
    if len(coord) == 0:
        raise InputError(path, "point cloud is empty (0 points)")
    if not np.isfinite(coord).all():
        raise InputError(path, f"coord holds NaN/inf in {int((~np.isfinite(coord)).any(1).sum())} rows")
    n = len(coord)
    out: dict[str, Any] = {}
    for key in ("color", "normal", "labels"):
        v = d.get(key)
        if v is not None and len(v) != n:
            raise InputError(path, f"{key} has {len(v)} rows, coord has {n}")
        out[key] = v
    normal = None if out["normal"] is None else np.asarray(out["normal"], dtype=np.float32)
    if normal is not None and (normal.shape != (n, 3) or not np.isfinite(normal).all()):
        raise InputError(path, f"normal must be finite (N, 3), got {normal.shape}")
    return PointInput(
        name, coord, _colors_uint8(out["color"], path), normal, _labels_or_none(out["labels"]), str(path)
    )


def _first_key(d: Any, keys: Sequence[str]) -> np.ndarray | None:
    for k in keys:
        if k in d:
            return np.asarray(d[k])
    return None


_LABEL_KEYS = ("segment20", "segment", "labels", "label", "semantic")


def _load_raw_folder(folder: Path) -> PointInput:
    from pointprobe.data.scannet import raw_scene_files, read_label_map, read_raw_scene

    files = raw_scene_files(folder)
    tsv = next(
        (
            p / "scannetv2-labels.combined.tsv"
            for p in (folder, folder.parent, folder.parent.parent)
            if (p / "scannetv2-labels.combined.tsv").is_file()
        ),
        None,
    )
    has_ann = files["segs"].is_file() and files["aggregation"].is_file()
    label_map = read_label_map(tsv) if tsv is not None and has_ann else None
    scene = read_raw_scene(folder, label_map, with_labels=label_map is not None)
    labels = scene.segment20 if scene.labelled else None
    return PointInput(
        scene.name,
        scene.coord.astype(np.float64),
        scene.color,
        scene.normal,
        _labels_or_none(labels),
        str(folder),
    )


def load_points(path: str | os.PathLike) -> PointInput:
    """Read a scene: a preprocessed folder (``coord.npy`` ...), a raw ScanNet scene folder
    (``<name>_vh_clean_2.ply``; labels when the segs / aggregation files and the label table are there),
    a ``.ply`` (x, y, z, optional colours, normals, ``label``), a ``.npy`` (N, 3 / 6 / 9: coord, color,
    normal) or a ``.npz`` (``coord`` and optional ``color``, ``normal``, ``segment20`` / ``labels``)."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such scene file or folder")
    if path.is_dir():
        if (path / "coord.npy").is_file():
            from pointprobe.data.scannet import load_scene

            s = load_scene(path)
            return PointInput(
                s.name,
                s.coord.astype(np.float64),
                s.color,
                s.normal,
                _labels_or_none(s.segment20) if s.labelled else None,
                str(path),
            )
        if (path / f"{path.name}_vh_clean_2.ply").is_file():
            return _load_raw_folder(path)
        raise InputError(
            path,
            "folder is neither a preprocessed scene (coord.npy, color.npy, ...) nor a raw "
            f"ScanNet scene ({path.name}_vh_clean_2.ply)",
        )
    suffix = path.suffix.lower()
    if suffix == ".ply":
        from pointprobe.data.ply import read_ply
        from pointprobe.data.scannet import vertex_normals

        mesh = read_ply(path)
        if not mesh.has("x", "y", "z"):
            raise InputError(path, "vertices lack x/y/z")
        coord = mesh.coord
        normal = mesh.normal
        if normal is None and len(mesh.faces):
            normal = vertex_normals(coord, mesh.faces)
        names = mesh.vertex.dtype.names or ()
        labels = next((mesh.vertex[k] for k in _LABEL_KEYS if k in names), None)
        return _from_arrays(
            path.stem, path, {"coord": coord, "color": mesh.color, "normal": normal, "labels": labels}
        )
    if suffix == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise InputError(path, f"cannot read array ({e})") from None
        if a.ndim != 2 or a.shape[1] not in (3, 6, 9):
            raise InputError(path, f"expected an (N, 3|6|9) array of coord[, color[, normal]], got {a.shape}")
        return _from_arrays(
            path.stem,
            path,
            {
                "coord": a[:, :3],
                "color": a[:, 3:6] if a.shape[1] >= 6 else None,
                "normal": a[:, 6:9] if a.shape[1] == 9 else None,
            },
        )
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
        except (ValueError, OSError, EOFError) as e:
            raise InputError(path, f"cannot read archive ({e})") from None
        if "coord" not in d:
            raise InputError(path, f"no 'coord' array (has: {', '.join(sorted(d)) or 'none'})")
        return _from_arrays(
            path.stem,
            path,
            {
                "coord": d["coord"],
                "color": _first_key(d, ("color", "colors", "rgb")),
                "normal": _first_key(d, ("normal", "normals")),
                "labels": _first_key(d, _LABEL_KEYS),
            },
        )
    raise InputError(path, f"unsupported scene format '{suffix}' (folder, .ply, .npy or .npz)")


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

    from pointprobe.models.registry import PointEncoderSpec, build_encoder

    if checkpoint is None and name is None:
        raise ConfigError(
            "choose an encoder: checkpoint=FILE, name=NAME with random_init=True, or name='raw'"
        )
    if checkpoint is None and name != "raw" and not random_init:
        checkpoint = name  # a release name (sonata, sonata_small) resolved from the local caches / hub
    spec = PointEncoderSpec(name=name or "ptv3", checkpoint=None if checkpoint is None else str(checkpoint),
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


def raw_features(pts: PointInput) -> np.ndarray:
    """Input features without an encoder: z-scored columns of (centred coord, colour / 255, normal)."""
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
    return np.ascontiguousarray(per_point), _labels_or_none(lab), record


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
