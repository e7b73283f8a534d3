"""Points of one scene from any supported file: the reader behind ``featviz points`` and ``pointprobe label``.

:func:`load_points` reads a preprocessed scene folder (``coord.npy`` ...), a raw ScanNet scene folder,
a ``.ply``, a ``.npy`` or a ``.npz`` into a :class:`PointInput`; :func:`points_scene` turns one into a
:class:`~pointprobe.data.scannet.Scene` for the feature extractors (labels unknown).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import InputError
from pointprobe.data.scannet import Scene

__all__ = ["PointInput", "load_points", "points_scene", "labels_or_none", "FILE_READERS", "FOLDER_READERS"]


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


def labels_or_none(a: np.ndarray | None) -> np.ndarray | None:
    """(N,) int64 labels, or None when there are none or none is known (all < 0)."""
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
        name, coord, _colors_uint8(out["color"], path), normal, labels_or_none(out["labels"]), str(path)
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
        labels_or_none(labels),
        str(folder),
    )


def _read_preprocessed_folder(path: Path) -> PointInput:
    from pointprobe.data.scannet import load_scene

    s = load_scene(path)
    return PointInput(
        s.name,
        s.coord.astype(np.float64),
        s.color,
        s.normal,
        labels_or_none(s.segment20) if s.labelled else None,
        str(path),
    )


def _read_ply(path: Path) -> PointInput:
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
    arrays = {"coord": coord, "color": mesh.color, "normal": normal, "labels": labels}
    return _from_arrays(path.stem, path, arrays)


def _read_npy(path: Path) -> PointInput:
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


def _read_npz(path: Path) -> PointInput:
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


# The readers: a new format is one reader function and one entry. Scene folders: (the file that marks the
# kind, {name} = the folder's name; what it is, for errors; reader), tried in order. Files: suffix -> reader.
FOLDER_READERS: tuple[tuple[str, str, Callable[[Path], PointInput]], ...] = (
    ("coord.npy", "a preprocessed scene (coord.npy, color.npy, ...)", _read_preprocessed_folder),
    ("{name}_vh_clean_2.ply", "a raw ScanNet scene ({name}_vh_clean_2.ply)", _load_raw_folder),
)
FILE_READERS: dict[str, Callable[[Path], PointInput]] = {
    ".ply": _read_ply,
    ".npy": _read_npy,
    ".npz": _read_npz,
}


def load_points(path: str | os.PathLike) -> PointInput:
    """Read a scene: a preprocessed folder (``coord.npy`` ...), a raw ScanNet scene folder
    (``<name>_vh_clean_2.ply``; labels when the segs / aggregation files and the label table are there),
    a ``.ply`` (x, y, z, optional colours, normals, ``label``), a ``.npy`` (N, 3 / 6 / 9: coord, color,
    normal) or a ``.npz`` (``coord`` and optional ``color``, ``normal``, ``segment20`` / ``labels``)."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such scene file or folder")
    if path.is_dir():
        for marker, _what, reader in FOLDER_READERS:
            if (path / marker.format(name=path.name)).is_file():
                return reader(path)
        kinds = " nor ".join(what.format(name=path.name) for _, what, _ in FOLDER_READERS)
        raise InputError(path, f"folder is neither {kinds}")
    suffix = path.suffix.lower()
    reader = FILE_READERS.get(suffix)
    if reader is None:
        *first, last = FILE_READERS
        raise InputError(path, f"unsupported scene format '{suffix}' (folder, {', '.join(first)} or {last})")
    return reader(path)


def points_scene(pts: PointInput) -> Scene:
    """A validated ``Scene`` of ``pts`` for feature extraction: coord float32, missing colours / normals as
    zeros, labels unknown (``labelled=False``; only a preprocessed folder's labels are known to be
    ScanNet-20 classes, read those with ``load_scene``)."""
    from pointprobe.data.scannet import IGNORE_INDEX

    coord = pts.coord.astype(np.float32)
    color = pts.color if pts.color is not None else np.zeros_like(coord, dtype=np.uint8)
    normal = pts.normal.astype(np.float32) if pts.normal is not None else np.zeros_like(coord)
    none = np.full(len(coord), IGNORE_INDEX, dtype=np.int64)
    scene = Scene(pts.name, coord, color, normal, none, none.copy(), none.copy(), labelled=False)
    return scene.validate(pts.source)
