"""Posed RGB-D frames in ScanNet's ``.sens`` export layout, per scene folder.

``color/N.jpg``, ``depth/N.png`` (16-bit, millimetres, 0 = no measurement), ``pose/N.txt`` (4x4
camera-to-world, OpenCV camera: x right, y down, z forward), ``intrinsic/intrinsic_color.txt`` and
``intrinsic/intrinsic_depth.txt`` (4x4). Frames whose pose holds NaN/inf are skipped by ``iter_frames``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from common.errors import InputError

# fmt: off
__all__ = [
    "Frame", "write_frame", "write_intrinsics", "read_intrinsics", "read_matrix", "frame_indices",
    "read_frame", "iter_frames", "pose_is_valid", "scale_intrinsics", "backproject_depth",
]
# fmt: on


@dataclasses.dataclass
class Frame:
    """One posed RGB-D frame: colour (H,W,3) uint8, depth (h,w) float32 metres, pose 4x4 cam->world."""

    index: int
    color: np.ndarray
    depth: np.ndarray
    pose: np.ndarray


def _write_matrix(path: Path, m: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(" ".join(f"{v:.6f}" for v in row) for row in np.asarray(m, np.float64)) + "\n")


def read_matrix(path: str | os.PathLike) -> np.ndarray:
    """A 4x4 matrix from a text file (ScanNet pose / intrinsics); NaN/inf entries are kept."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        m = np.array(path.read_text().split(), dtype=np.float64)
    except ValueError:
        raise InputError(path, "not a matrix of numbers") from None
    if m.size != 16:
        raise InputError(path, f"expected a 4x4 matrix (16 numbers), found {m.size}")
    return m.reshape(4, 4)


def write_intrinsics(
    scene_dir: str | os.PathLike, color_K: np.ndarray, depth_K: np.ndarray | None = None
) -> None:
    """Write ``intrinsic/intrinsic_{color,depth}.txt`` (given 3x3 or 4x4, written 4x4) and extrinsics."""
    d = Path(scene_dir) / "intrinsic"
    for name, K in (("color", color_K), ("depth", color_K if depth_K is None else depth_K)):
        K = np.asarray(K, np.float64)
        M = np.eye(4)
        M[: K.shape[0], : K.shape[1]] = K
        _write_matrix(d / f"intrinsic_{name}.txt", M)
        _write_matrix(d / f"extrinsic_{name}.txt", np.eye(4))


def read_intrinsics(scene_dir: str | os.PathLike, which: str = "depth") -> np.ndarray:
    """The 3x3 intrinsic matrix of the ``depth`` or ``color`` camera."""
    if which not in ("depth", "color"):
        raise ValueError(f"which must be 'depth' or 'color', got {which!r}")
    path = Path(scene_dir) / "intrinsic" / f"intrinsic_{which}.txt"
    K = read_matrix(path)[:3, :3]
    if not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InputError(path, "intrinsics are not finite positive focal lengths")
    return K


def scale_intrinsics(K: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """Rescale a 3x3 intrinsic matrix from image size (W, H) to (W', H') (pixel-centre convention)."""
    sx, sy = to_size[0] / from_size[0], to_size[1] / from_size[1]
    K2 = np.array(K, dtype=np.float64, copy=True)[:3, :3]
    K2[0, 0] *= sx
    K2[1, 1] *= sy
    K2[0, 2] = (K2[0, 2] + 0.5) * sx - 0.5
    K2[1, 2] = (K2[1, 2] + 0.5) * sy - 0.5
    return K2


def write_frame(
    scene_dir: str | os.PathLike,
    index: int,
    color: np.ndarray,
    depth_m: np.ndarray,
    pose: np.ndarray,
    jpeg_quality: int = 90,
    png_level: int = 1,
) -> None:
    """Write ``color/index.jpg``, ``depth/index.png`` (uint16 mm) and ``pose/index.txt``."""
    from PIL import Image

    d = Path(scene_dir)
    for sub in ("color", "depth", "pose"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(color, np.uint8)).save(d / "color" / f"{index}.jpg", quality=jpeg_quality)
    depth = np.nan_to_num(np.asarray(depth_m, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    mm = np.clip(np.round(depth * 1000.0), 0, 65535).astype(np.uint16)
    Image.fromarray(mm).save(d / "depth" / f"{index}.png", compress_level=png_level)
    _write_matrix(d / "pose" / f"{index}.txt", pose)


def frame_indices(scene_dir: str | os.PathLike) -> list[int]:
    """Sorted frame numbers that have a pose file (``pose/N.txt``)."""
    d = Path(scene_dir) / "pose"
    if not d.is_dir():
        raise InputError(d, "no pose folder (not an RGB-D export)")
    return sorted(int(p.stem) for p in d.glob("*.txt") if p.stem.isdigit())


def pose_is_valid(pose: np.ndarray) -> bool:
    """False for the NaN/inf poses that ScanNet's tracker leaves on lost frames."""
    return bool(np.isfinite(pose).all())


def read_frame(scene_dir: str | os.PathLike, index: int) -> Frame:
    """Read one frame; depth comes back in metres (float32, 0 = no measurement)."""
    from PIL import Image, UnidentifiedImageError

    d = Path(scene_dir)
    cpath, dpath = d / "color" / f"{index}.jpg", d / "depth" / f"{index}.png"
    for p in (cpath, dpath):
        if not p.is_file():
            raise InputError(p, "file not found")
    try:
        with Image.open(cpath) as im:
            color = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(cpath, f"cannot decode image ({e})") from None
    try:
        with Image.open(dpath) as im:
            raw = np.asarray(im)
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(dpath, f"cannot decode image ({e})") from None
    if raw.ndim != 2:
        raise InputError(dpath, f"depth image has shape {raw.shape}, expected one 16-bit channel")
    depth = raw.astype(np.float32) / 1000.0
    pose = read_matrix(d / "pose" / f"{index}.txt")
    return Frame(index, color, depth, pose)


def iter_frames(scene_dir: str | os.PathLike, step: int = 1, skip_invalid: bool = True) -> Iterator[Frame]:
    """Every ``step``-th frame (by position in the sorted list), skipping NaN/inf poses."""
    for idx in frame_indices(scene_dir)[::step]:
        if skip_invalid and not pose_is_valid(read_matrix(Path(scene_dir) / "pose" / f"{idx}.txt")):
            continue
        yield read_frame(scene_dir, idx)


def backproject_depth(depth: np.ndarray, K: np.ndarray, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points (M,3) of the valid (>0) depth pixels and their (M,2) pixel coords (u=col, v=row)."""
    v, u = np.nonzero(depth > 0)
    z = depth[v, u].astype(np.float64)
    x = (u - K[0, 2]) / K[0, 0] * z
    y = (v - K[1, 2]) / K[1, 1] * z
    cam = np.stack([x, y, z], axis=1)
    world = cam @ pose[:3, :3].T + pose[:3, 3]
    return world, np.stack([u, v], axis=1)
