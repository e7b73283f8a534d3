"""The scene generator: synthetic ScanNet-like rooms written in the raw ScanNet v2 layout with RGB-D frames.

Rooms (its own package beside the real readers of ``pointprobe.data``, which it writes for):

- ``geometry``: triangle-mesh primitives (``rect``, ``box``, ``cylinder``, ...) and ``Obj``/``Part``.
- ``objects``: furniture and fixtures (``make_*``) from primitives, colour palettes.
- ``rooms``: categories (``RAW_TO_NYU40``, ``NYU40_NAMES``, ``ROOM_TYPES``), the ``Room`` layout,
  its furnishing.
- ``cameras``: camera paths (``CAMERA_PATHS``), intrinsics and the ray-cast RGB-D renderer.
- ``scenes``: ``generate_scene`` -> ``SynthScene`` (one annotated mesh in world coordinates), in one of
  the ``DOMAINS``: ``rgbd`` (default, ScanNet-like coloured rooms) or ``lidar`` (workplaces scanned
  from a tripod: no colour, range noise and density falling off with distance).
- ``dataset``: writing scenes, label table and splits (``write_scene``, ``generate_dataset``).
"""

from pointprobe.synth.cameras import CAMERA_PATHS, camera_intrinsics, render_frames
from pointprobe.synth.dataset import (
    generate_dataset,
    split_names,
    write_label_maps,
    write_label_table,
    write_scene,
)
from pointprobe.synth.rooms import NYU40_NAMES, RAW_TO_NYU40, ROOM_TYPES
from pointprobe.synth.scenes import DOMAINS, SynthScene, generate_scene, vertex_label_ids

# fmt: off
__all__ = ["generate_dataset", "generate_scene", "SynthScene", "RAW_TO_NYU40", "NYU40_NAMES", "ROOM_TYPES",
           "write_label_table", "write_label_maps", "write_scene", "split_names", "camera_intrinsics",
           "render_frames", "vertex_label_ids", "CAMERA_PATHS", "DOMAINS"]
# fmt: on
