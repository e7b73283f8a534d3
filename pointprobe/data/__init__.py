"""Dataset readers: PLY meshes, raw ScanNet v2 scenes, Pointcept's preprocessed layout, RGB-D frames.

``frames`` is imported on use; the common readers are re-exported here. The scene generator that writes
these layouts is its own package, ``pointprobe.synth``.
"""

from pointprobe.data.ply import PlyMesh, read_ply, write_ply
from pointprobe.data.scannet import (
    CLASS_LABELS_20,
    CLASS_LABELS_200,
    IGNORE_INDEX,
    VALID_CLASS_IDS_20,
    VALID_CLASS_IDS_200,
    Scene,
    list_scenes,
    load_scene,
    read_label_map,
    read_raw_scene,
    save_scene,
    vertex_normals,
)

# fmt: off
__all__ = [
    "PlyMesh", "read_ply", "write_ply", "CLASS_LABELS_20", "CLASS_LABELS_200", "IGNORE_INDEX",
    "VALID_CLASS_IDS_20", "VALID_CLASS_IDS_200", "Scene", "list_scenes", "load_scene",
    "read_label_map", "read_raw_scene", "save_scene", "vertex_normals",
]
# fmt: on
