"""ScanNet v2: raw scene folders -> per-vertex arrays, and Pointcept's preprocessed layout.

Raw layout (``root/``): ``scans/sceneXXXX_YY/`` (and ``scans_test/``) with the ``_vh_clean_2.ply``
mesh, ``_vh_clean_2.0.010000.segs.json`` and ``.aggregation.json``; ``scannetv2-labels.combined.tsv``
and ``scannetv2_{train,val,test}.txt`` next to ``scans/``. When the root lacks them, the official
files shipped in ``pointprobe/data/scannet_meta/`` are used (``shipped_meta_file``).

Label arrays are int64 (as Pointcept writes them); the instance id of a vertex is its group's
``objectId``, as in the ScanNet benchmark's ground-truth export (``export_train_mesh_for_evaluation.py``).

Preprocessed layout: ``root/{split}/sceneXXXX_YY/{coord,color,normal,segment20,segment200,instance}.npy``
(labels absent for unlabelled test scenes; they then load as -1).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.errors import InputError
from common.paths import check_item_name, disk_errors, remove_quietly
from pointprobe.data.ply import read_ply

# fmt: off
__all__ = [
    "IGNORE_INDEX", "VALID_CLASS_IDS_20", "CLASS_LABELS_20", "SCANNET20_PALETTE", "VALID_CLASS_IDS_200",
    "CLASS_LABELS_200", "SPLITS", "LabelMap", "Scene", "read_label_map", "read_segs", "read_aggregation",
    "vertex_normals", "labels_from_annotations", "raw_scene_files", "read_raw_scene", "read_split_file",
    "find_raw_scene", "class_names", "load_scene", "save_scene", "scene_is_complete", "list_scenes",
    "LABEL_TABLE", "SHIPPED_META", "shipped_meta_file", "raw_scene_names",
]
# fmt: on

IGNORE_INDEX = -1
SPLITS = ("train", "val", "test")
LABEL_TABLE = "scannetv2-labels.combined.tsv"
SHIPPED_META = "pointprobe/data/scannet_meta"  # where the shipped files live in the source tree

# fmt: off
# The 20-class benchmark: train index i <- nyu40 id VALID_CLASS_IDS_20[i].
VALID_CLASS_IDS_20 = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)
CLASS_LABELS_20 = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
    "counter", "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink", "bathtub",
    "otherfurniture",
)

# The ScanNet benchmark's colours of the 20 classes (nyu40 palette entries of each class), RGB 0-255: the one
# palette of label pictures, labelled PLY files and cluster pictures.
SCANNET20_PALETTE = np.array([
    (174, 199, 232), (152, 223, 138), (31, 119, 180), (255, 187, 120), (188, 189, 34),
    (140, 86, 75), (255, 152, 150), (214, 39, 40), (197, 176, 213), (148, 103, 189),
    (196, 156, 148), (23, 190, 207), (247, 182, 210), (219, 219, 141), (255, 127, 14),
    (158, 218, 229), (44, 160, 44), (112, 128, 144), (227, 119, 194), (82, 84, 163),
], dtype=np.uint8)

# ScanNet200 benchmark (BenchmarkScripts/ScanNet200/scannet200_constants.py): train index i <- tsv ``id``
# VALID_CLASS_IDS_200[i]; CLASS_LABELS_200[i] is its name.
VALID_CLASS_IDS_200 = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 21, 22, 23, 24, 26, 27, 28, 29, 31, 32, 33,
    34, 35, 36, 38, 39, 40, 41, 42, 44, 45, 46, 47, 48, 49, 50, 51, 52, 54, 55, 56, 57, 58, 59, 62, 63, 64,
    65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 82, 84, 86, 87, 88, 89, 90, 93, 95, 96,
    97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 110, 112, 115, 116, 118, 120, 121, 122, 125, 128, 130,
    131, 132, 134, 136, 138, 139, 140, 141, 145, 148, 154, 155, 156, 157, 159, 161, 163, 165, 166, 168, 169,
    170, 177, 180, 185, 188, 191, 193, 195, 202, 208, 213, 214, 221, 229, 230, 232, 233, 242, 250, 261, 264,
    276, 283, 286, 300, 304, 312, 323, 325, 331, 342, 356, 370, 392, 395, 399, 408, 417, 488, 540, 562, 570,
    572, 581, 609, 748, 776, 1156, 1163, 1164, 1165, 1166, 1167, 1168, 1169, 1170, 1171, 1172, 1173, 1174,
    1175, 1176, 1178, 1179, 1180, 1181, 1182, 1183, 1184, 1185, 1186, 1187, 1188, 1189, 1190, 1191,
)
CLASS_LABELS_200 = (
    "wall", "chair", "floor", "table", "door", "couch", "cabinet", "shelf", "desk", "office chair", "bed",
    "pillow", "sink", "picture", "window", "toilet", "bookshelf", "monitor", "curtain", "book", "armchair",
    "coffee table", "box", "refrigerator", "lamp", "kitchen cabinet", "towel", "clothes", "tv", "nightstand",
    "counter", "dresser", "stool", "cushion", "plant", "ceiling", "bathtub", "end table", "dining table",
    "keyboard", "bag", "backpack", "toilet paper", "printer", "tv stand", "whiteboard", "blanket",
    "shower curtain", "trash can", "closet", "stairs", "microwave", "stove", "shoe", "computer tower",
    "bottle", "bin", "ottoman", "bench", "board", "washing machine", "mirror", "copier", "basket",
    "sofa chair", "file cabinet", "fan", "laptop", "shower", "paper", "person", "paper towel dispenser",
    "oven", "blinds", "rack", "plate", "blackboard", "piano", "suitcase", "rail", "radiator", "recycling bin",
    "container", "wardrobe", "soap dispenser", "telephone", "bucket", "clock", "stand", "light",
    "laundry basket", "pipe", "clothes dryer", "guitar", "toilet paper holder", "seat", "speaker", "column",
    "bicycle", "ladder", "bathroom stall", "shower wall", "cup", "jacket", "storage bin", "coffee maker",
    "dishwasher", "paper towel roll", "machine", "mat", "windowsill", "bar", "toaster", "bulletin board",
    "ironing board", "fireplace", "soap dish", "kitchen counter", "doorframe", "toilet paper dispenser",
    "mini fridge", "fire extinguisher", "ball", "hat", "shower curtain rod", "water cooler", "paper cutter",
    "tray", "shower door", "pillar", "ledge", "toaster oven", "mouse", "toilet seat cover dispenser",
    "furniture", "cart", "storage container", "scale", "tissue box", "light switch", "crate", "power outlet",
    "decoration", "sign", "projector", "closet door", "vacuum cleaner", "candle", "plunger", "stuffed animal",
    "headphones", "dish rack", "broom", "guitar case", "range hood", "dustpan", "hair dryer", "water bottle",
    "handicap bar", "purse", "vent", "shower floor", "water pitcher", "mailbox", "bowl", "paper bag",
    "alarm clock", "music stand", "projector screen", "divider", "laundry detergent", "bathroom counter",
    "object", "bathroom vanity", "closet wall", "laundry hamper", "bathroom stall door", "ceiling light",
    "trash bin", "dumbbell", "stair rail", "tube", "bathroom cabinet", "cd case", "closet rod",
    "coffee kettle", "structure", "shower head", "keyboard piano", "case of water bottles", "coat rack",
    "storage organizer", "folded chair", "fire alarm", "power strip", "calendar", "poster", "potted plant",
    "luggage", "mattress",
)
# fmt: on
assert len(VALID_CLASS_IDS_20) == len(CLASS_LABELS_20) == 20
assert len(VALID_CLASS_IDS_200) == len(CLASS_LABELS_200) == 200

_LABEL_FILES = ("segment20", "segment200", "instance")
_ARRAY_FILES = ("coord", "color", "normal") + _LABEL_FILES


# ---------------------------------------------------------------------------------------------- labels
@dataclasses.dataclass(frozen=True)
class LabelMap:
    """``raw_category`` -> (tsv ``id``, ``nyu40id``), from ``scannetv2-labels.combined.tsv``."""

    raw_to_id: dict[str, int]
    raw_to_nyu40: dict[str, int]

    def segment20(self, raw_category: str) -> int:
        """Train index 0..19 of the 20-class benchmark, else -1."""
        nyu = self.raw_to_nyu40.get(raw_category, 0)
        return VALID_CLASS_IDS_20.index(nyu) if nyu in VALID_CLASS_IDS_20 else IGNORE_INDEX

    def segment200(self, raw_category: str) -> int:
        """Train index 0..199 of ScanNet200, else -1."""
        i = self.raw_to_id.get(raw_category, 0)
        return _ID200_INDEX.get(i, IGNORE_INDEX)


_ID200_INDEX = {cid: i for i, cid in enumerate(VALID_CLASS_IDS_200)}


def read_label_map(path: str | os.PathLike) -> LabelMap:
    """Parse ``scannetv2-labels.combined.tsv`` (needs columns ``id``, ``raw_category``, ``nyu40id``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "label table not found")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        cols = reader.fieldnames or []
        missing = [c for c in ("id", "raw_category", "nyu40id") if c not in cols]
        if missing:
            raise InputError(
                path, f"missing column(s) {', '.join(missing)} (has: {', '.join(cols) or 'none'})"
            )
        raw_to_id, raw_to_nyu = {}, {}
        for lineno, row in enumerate(reader, start=2):
            raw = row["raw_category"]
            try:
                raw_to_id[raw] = int(row["id"])
                raw_to_nyu[raw] = int(row["nyu40id"]) if row["nyu40id"] not in (None, "") else 0
            except (TypeError, ValueError):
                raise InputError(path, f"line {lineno}: id/nyu40id is not an integer") from None
    if not raw_to_id:
        raise InputError(path, "label table has no rows")
    return LabelMap(raw_to_id, raw_to_nyu)


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, f"corrupt JSON ({e})") from None


def read_segs(path: str | os.PathLike) -> np.ndarray:
    """``segIndices`` of a ``.segs.json`` file as int64 (one over-segment id per vertex)."""
    path = Path(path)
    d = _load_json(path)
    if not isinstance(d, dict) or "segIndices" not in d:
        raise InputError(path, "no 'segIndices' key")
    try:
        seg = np.asarray(d["segIndices"], dtype=np.int64)
    except (TypeError, ValueError):
        raise InputError(path, "'segIndices' is not a list of integers") from None
    if seg.ndim != 1:
        raise InputError(path, "'segIndices' is not a flat list")
    return seg


def read_aggregation(path: str | os.PathLike) -> list[dict]:
    """``segGroups`` of an ``.aggregation.json`` file (each with objectId/id, segments, label)."""
    path = Path(path)
    d = _load_json(path)
    if not isinstance(d, dict) or "segGroups" not in d:
        raise InputError(path, "no 'segGroups' key")
    groups = d["segGroups"]
    for i, g in enumerate(groups):
        if not isinstance(g, dict) or "segments" not in g or "label" not in g:
            raise InputError(path, f"segGroups[{i}] lacks 'segments' or 'label'")
        if "objectId" not in g and "id" not in g:
            raise InputError(path, f"segGroups[{i}] has neither 'objectId' nor 'id'")
    return groups


def vertex_normals(coord: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals (unit length, float32); vertices in no face get (0, 0, 0)."""
    coord = np.asarray(coord, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    n = len(coord)
    out = np.zeros((n, 3), np.float64)
    if len(faces):
        v0 = coord[faces[:, 0]]
        a, b = coord[faces[:, 1]] - v0, coord[faces[:, 2]] - v0
        # cross product written out (np.cross is several times slower); length = 2 * area: area weighting
        fn = (
            a[:, 1] * b[:, 2] - a[:, 2] * b[:, 1],
            a[:, 2] * b[:, 0] - a[:, 0] * b[:, 2],
            a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0],
        )
        idx = faces.ravel()
        for k in range(3):
            out[:, k] = np.bincount(idx, weights=np.repeat(fn[k], 3), minlength=n)
    length = np.sqrt(np.einsum("ij,ij->i", out, out))[:, None]
    np.divide(out, length, out=out, where=length > 0)
    return out.astype(np.float32)


def labels_from_annotations(
    seg_indices: np.ndarray, seg_groups: Sequence[dict], label_map: LabelMap
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-vertex (segment20, segment200, instance) int64 arrays, -1 where unannotated.

    Each group labels every vertex whose over-segment id is in its ``segments``; the instance id is
    the group's ``objectId`` (``id`` only if it has none), the field the ScanNet benchmark's own
    ground-truth export reads (Pointcept reads ``id``; the two differ in some files). Later groups
    overwrite earlier ones, as in Pointcept.
    """
    n = len(seg_indices)
    sem20 = np.full(n, IGNORE_INDEX, np.int64)
    sem200 = np.full(n, IGNORE_INDEX, np.int64)
    inst = np.full(n, IGNORE_INDEX, np.int64)
    if n == 0 or not seg_groups:
        return sem20, sem200, inst
    uniq, inverse = np.unique(seg_indices, return_inverse=True)
    group_of_seg = np.full(len(uniq), -1, np.int64)  # last group claiming each segment
    g20 = np.empty(len(seg_groups), np.int64)
    g200 = np.empty(len(seg_groups), np.int64)
    gid = np.empty(len(seg_groups), np.int64)
    for gi, g in enumerate(seg_groups):
        g20[gi] = label_map.segment20(g["label"])
        g200[gi] = label_map.segment200(g["label"])
        gid[gi] = int(g.get("objectId", g.get("id")))
        segs = np.asarray(g["segments"], dtype=np.int64)
        pos = np.searchsorted(uniq, segs)
        inside = pos < len(uniq)
        pos, segs = pos[inside], segs[inside]
        group_of_seg[pos[uniq[pos] == segs]] = gi  # segment ids absent from the mesh are ignored
    vg = group_of_seg[inverse]
    has = vg >= 0
    sem20[has] = g20[vg[has]]
    sem200[has] = g200[vg[has]]
    inst[has] = gid[vg[has]]
    return sem20, sem200, inst


# ------------------------------------------------------------------------------------------- scenes
@dataclasses.dataclass
class Scene:
    """One scene as per-vertex arrays; labels are -1 where unannotated (all -1 when unlabelled)."""

    name: str
    coord: np.ndarray  # (N, 3) float32
    color: np.ndarray  # (N, 3) uint8
    normal: np.ndarray  # (N, 3) float32
    segment20: np.ndarray  # (N,) int64, 0..19 or -1
    segment200: np.ndarray  # (N,) int64, 0..199 or -1
    instance: np.ndarray  # (N,) int64, object id or -1
    labelled: bool = True

    def __len__(self) -> int:
        return len(self.coord)

    def validate(self, where: str | os.PathLike | None = None) -> Scene:
        """Check shapes, dtypes, finiteness and label ranges; raise ``InputError`` naming ``where``."""
        where = where if where is not None else self.name
        n = len(self.coord)
        if n == 0:
            raise InputError(where, "empty scene (0 points)")
        for key in ("coord", "color", "normal"):
            a = getattr(self, key)
            if a.ndim != 2 or a.shape != (n, 3):
                raise InputError(where, f"{key} has shape {a.shape}, expected ({n}, 3)")
        for key in _LABEL_FILES:
            a = getattr(self, key)
            if a.shape != (n,):
                raise InputError(where, f"{key} has shape {a.shape}, expected ({n},) like coord")
        for key in ("coord", "normal"):
            bad = ~np.isfinite(getattr(self, key))
            if bad.any():
                raise InputError(where, f"{key} holds {int(bad.any(1).sum())} rows with NaN/inf")
        for key, hi in (("segment20", 19), ("segment200", 199)):
            a = getattr(self, key)
            if a.size and (a.min() < -1 or a.max() > hi):
                raise InputError(where, f"{key} values outside [-1, {hi}] (min {a.min()}, max {a.max()})")
        return self

    def labels(self, label_set: str = "segment20") -> np.ndarray:
        """The label array named ``label_set`` (segment20 / segment200 / instance)."""
        if label_set not in _LABEL_FILES:
            raise ValueError(f"label_set must be one of {_LABEL_FILES}, got {label_set!r}")
        return getattr(self, label_set)


def raw_scene_files(scene_dir: str | os.PathLike) -> dict[str, Path]:
    """Paths of a raw scene's mesh, segs and aggregation files (existing or not)."""
    d = Path(scene_dir)
    name = d.name
    return {
        "mesh": d / f"{name}_vh_clean_2.ply",
        "segs": d / f"{name}_vh_clean_2.0.010000.segs.json",
        "aggregation": d / f"{name}.aggregation.json",
    }


def read_raw_scene(
    scene_dir: str | os.PathLike, label_map: LabelMap | None, with_labels: bool | None = None
) -> Scene:
    """Read a raw ScanNet scene folder into a validated ``Scene``.

    ``with_labels``: True requires segs + aggregation; False ignores them; None (default) uses
    them when both exist (test scenes usually have none) and marks the scene unlabelled otherwise.
    """
    files = raw_scene_files(scene_dir)
    name = Path(scene_dir).name
    if not Path(scene_dir).is_dir():
        raise InputError(scene_dir, "scene folder not found")
    mesh = read_ply(files["mesh"])
    if len(mesh) == 0:
        raise InputError(files["mesh"], "empty scene (0 vertices)")
    if not mesh.has("x", "y", "z"):
        raise InputError(files["mesh"], "vertices lack x/y/z")
    coord = mesh.coord
    bad = ~np.isfinite(coord).all(1)
    if bad.any():
        raise InputError(files["mesh"], f"{int(bad.sum())} vertices with NaN/inf coordinates")
    color = mesh.color if mesh.color is not None else np.zeros((len(coord), 3), np.uint8)
    normal = vertex_normals(coord, mesh.faces)
    n = len(coord)
    if with_labels is None:
        with_labels = files["segs"].is_file() and files["aggregation"].is_file()
    if with_labels:
        if label_map is None:
            raise InputError(scene_dir, "labels requested but no label table given")
        seg = read_segs(files["segs"])
        if len(seg) != n:
            raise InputError(files["segs"], f"{len(seg)} segment ids for {n} mesh vertices")
        groups = read_aggregation(files["aggregation"])
        s20, s200, inst = labels_from_annotations(seg, groups, label_map)
    else:
        s20 = s200 = inst = np.full(n, IGNORE_INDEX, np.int64)
    scene = Scene(
        name,
        coord,
        color,
        normal,
        s20.astype(np.int64),
        s200.astype(np.int64),
        inst.astype(np.int64),
        labelled=bool(with_labels),
    )
    return scene.validate(files["mesh"])


def read_split_file(path: str | os.PathLike) -> list[str]:
    """Scene names listed in a ``scannetv2_{split}.txt`` file (blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "split file not found")
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def shipped_meta_file(name: str) -> Path:
    """Path of a file shipped with pointprobe in ``scannet_meta/`` (official split lists, label table)."""
    from importlib.resources import as_file, files

    res = files("pointprobe.data").joinpath("scannet_meta", name)
    if not res.is_file():
        raise InputError(SHIPPED_META + "/" + name, "shipped ScanNet file missing (broken install?)")
    with as_file(res) as p:  # a real file for an installed package; a no-op for a source tree
        return Path(p)


def raw_scene_names(raw_root: str | os.PathLike) -> dict[str, Path]:
    """Scene folders present under ``raw_root/scans`` and ``raw_root/scans_test``: name -> folder."""
    root = Path(raw_root)
    found: dict[str, Path] = {}
    for sub in ("scans_test", "scans"):  # scans wins, as in find_raw_scene
        d = root / sub
        if d.is_dir():
            found.update({p.name: p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")})
    return found


def find_raw_scene(raw_root: str | os.PathLike, name: str) -> Path:
    """``raw_root/scans/name`` or ``raw_root/scans_test/name`` (the first that exists; else the former)."""
    root = Path(raw_root)
    for sub in ("scans", "scans_test"):
        if (root / sub / name).is_dir():
            return root / sub / name
    return root / "scans" / name


# ------------------------------------------------------------------------------- preprocessed layout
def save_scene(scene: Scene, folder: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Write a scene's ``.npy`` files atomically: into a temporary folder next to ``folder``, then
    swapped in by renames (an existing scene folder is renamed away next to it, the new one renamed
    in, then the old one removed). Nothing is deleted before the new scene is complete, and nothing
    outside ``folder``'s parent: ``root`` (the output root) must contain ``folder``, whose name must be
    a plain name (``common.paths.check_item_name``). A full disk is one ``DiskError`` line."""
    folder = Path(folder)
    check_item_name(folder.name, "scene name")
    if root is not None:
        r, f = Path(os.path.abspath(root)), Path(os.path.abspath(folder))
        if r not in f.parents:
            raise InputError(folder, f"scene folder is outside the output folder {root}; refusing to write")
    parent = folder.parent
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = parent / f".{folder.name}.tmp-{tag}"
    with disk_errors(parent, cleanup=tmp):
        parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        np.save(tmp / "coord.npy", scene.coord.astype(np.float32))
        np.save(tmp / "color.npy", scene.color.astype(np.uint8))
        np.save(tmp / "normal.npy", scene.normal.astype(np.float32))
        if scene.labelled:
            for key in _LABEL_FILES:
                np.save(tmp / f"{key}.npy", getattr(scene, key).astype(np.int64))  # as Pointcept
        if folder.exists() or folder.is_symlink():
            old = parent / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.replace(folder, old)  # a symlink is moved itself, never followed
            os.replace(tmp, folder)
            remove_quietly(old)
        else:
            os.replace(tmp, folder)
    return folder


def scene_is_complete(folder: str | os.PathLike, labelled: bool = True) -> bool:
    """True when the folder holds every array file (labels too when ``labelled``)."""
    folder = Path(folder)
    names = _ARRAY_FILES if labelled else _ARRAY_FILES[:3]
    return all((folder / f"{k}.npy").is_file() for k in names)


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(path, f"cannot read array ({e})") from None


def load_scene(folder: str | os.PathLike) -> Scene:
    """Load ``folder/{coord,color,normal,segment20,segment200,instance}.npy`` and validate it.

    A folder without label files loads as an unlabelled scene (labels all -1, ``labelled=False``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "scene folder not found")
    arrays: dict[str, np.ndarray] = {}
    for key in ("coord", "color", "normal"):
        p = folder / f"{key}.npy"
        if not p.is_file():
            raise InputError(p, "file not found")
        arrays[key] = _load_npy(p)
    present = [(folder / f"{k}.npy").is_file() for k in _LABEL_FILES]
    if any(present) and not all(present):
        missing = [k for k, ok in zip(_LABEL_FILES, present) if not ok]
        raise InputError(folder / f"{missing[0]}.npy", "file not found (other label files exist)")
    labelled = all(present)
    n = len(arrays["coord"])
    for key in _LABEL_FILES:
        if labelled:
            a = _load_npy(folder / f"{key}.npy")
            if a.dtype.kind not in "iu":
                raise InputError(folder / f"{key}.npy", f"labels have dtype {a.dtype}, expected integers")
            arrays[key] = a.astype(np.int64)
        else:
            arrays[key] = np.full(n, IGNORE_INDEX, np.int64)
    coord = arrays["coord"]
    if coord.dtype.kind != "f":
        raise InputError(folder / "coord.npy", f"dtype {coord.dtype}, expected float")
    scene = Scene(
        name=folder.name,
        coord=coord.astype(np.float32, copy=False),
        color=arrays["color"].astype(np.uint8, copy=False),
        normal=arrays["normal"].astype(np.float32, copy=False),
        segment20=arrays["segment20"],
        segment200=arrays["segment200"],
        instance=arrays["instance"],
        labelled=labelled,
    )
    return scene.validate(folder)


def class_names(label_set: str) -> tuple[str, ...]:
    """The class names of a semantic label set (``segment20`` / ``segment200``), in train-index order."""
    if label_set == "segment20":
        return CLASS_LABELS_20
    if label_set == "segment200":
        return CLASS_LABELS_200
    raise InputError(None, f"label set {label_set!r} has no class list (use segment20 or segment200)")


def list_scenes(root: str | os.PathLike, split: str) -> list[str]:
    """Sorted scene names under ``root/split`` (hidden/temporary folders skipped)."""
    d = Path(root) / split
    if not d.is_dir():
        raise InputError(d, f"split folder '{split}' not found")
    return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
