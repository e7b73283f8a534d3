"""One point reader (``pointprobe.data.points``) serves ``featviz points`` and ``pointprobe label``;
one ScanNet 20-class palette serves label pictures, labelled PLY files and cluster pictures."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.errors import InputError
from pointprobe.data.ply import write_ply
from pointprobe.data.scannet import Scene, save_scene, vertex_normals


def _tetra() -> tuple[np.ndarray, np.ndarray]:
    coord = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.int64)
    return coord, faces


def test_label_reads_a_ply_as_before(tmp_path):
    """A PLY mesh without colours or normals: float32 coord, black colours, normals from the faces,
    labels unknown (a ``label`` property in the file is not taken as ScanNet-20 classes)."""
    from pointprobe.label import _read_any_scene

    coord, faces = _tetra()
    path = write_ply(tmp_path / "t.ply", {"x": coord[:, 0], "y": coord[:, 1], "z": coord[:, 2],
                                         "label": np.array([1, 2, 3, 4], np.int32)}, faces)
    s = _read_any_scene(Path(path))
    assert isinstance(s, Scene) and s.name == "t" and not s.labelled
    assert s.coord.dtype == np.float32 and s.color.dtype == np.uint8 and s.normal.dtype == np.float32
    np.testing.assert_array_equal(s.coord, coord)
    assert (s.color == 0).all() and (s.segment20 == -1).all() and (s.instance == -1).all()
    np.testing.assert_allclose(s.normal, vertex_normals(coord, faces))


def test_label_reads_every_format_of_the_point_reader(tmp_path):
    """``pointprobe label`` takes what ``featviz points`` takes: ``.npz`` / ``.npy`` too (it used to
    stop at "not a scene folder or a .ply file"); a preprocessed folder keeps its labels."""
    from pointprobe.label import _read_any_scene

    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(50, 3))
    rgb = rng.integers(0, 256, (50, 3)).astype(np.uint8)
    np.savez(tmp_path / "a.npz", coord=xyz, color=rgb)
    s = _read_any_scene(tmp_path / "a.npz")
    np.testing.assert_allclose(s.coord, xyz.astype(np.float32))
    np.testing.assert_array_equal(s.color, rgb)
    assert (s.normal == 0).all() and not s.labelled
    np.save(tmp_path / "b.npy", np.concatenate([xyz, rgb], 1))
    assert len(_read_any_scene(tmp_path / "b.npy")) == 50

    seg = rng.integers(-1, 20, 50)
    pre = Scene("scene0000_00", xyz.astype(np.float32), rgb, np.zeros((50, 3), np.float32), seg,
                np.full(50, -1), np.full(50, -1))
    folder = save_scene(pre, tmp_path / "pre" / "scene0000_00", tmp_path / "pre")
    s = _read_any_scene(folder)
    assert s.labelled
    np.testing.assert_array_equal(s.segment20, seg)
    (tmp_path / "c.txt").write_text("x")
    with pytest.raises(InputError, match="unsupported scene format"):
        _read_any_scene(tmp_path / "c.txt")


def test_one_scannet20_palette():
    from pointprobe.data.scannet import CLASS_LABELS_20, SCANNET20_PALETTE
    from pointprobe.label import labelled_ply_colors

    assert SCANNET20_PALETTE.shape == (len(CLASS_LABELS_20), 3) and SCANNET20_PALETTE.dtype == np.uint8
    assert tuple(SCANNET20_PALETTE[0]) == (174, 199, 232)  # wall, as in the ScanNet benchmark
    c = labelled_ply_colors(np.array([0, 19, -1]))
    np.testing.assert_array_equal(c, [SCANNET20_PALETTE[0], SCANNET20_PALETTE[19], (0, 0, 0)])
    many = labelled_ply_colors(np.arange(30), num_classes=30)
    np.testing.assert_array_equal(many[:20], SCANNET20_PALETTE)


def test_a_new_point_format_is_one_reader_and_one_entry(tmp_path, monkeypatch):
    """``load_points`` dispatches on a table: registering a reader for ``.xyz`` is all a format takes."""
    from pointprobe.data.points import FILE_READERS, PointInput, load_points

    def read_xyz(path: Path) -> PointInput:
        coord = np.loadtxt(path, ndmin=2)
        return PointInput(path.stem, coord, None, None, None, str(path))

    (tmp_path / "a.xyz").write_text("0 0 0\n1 2 3\n")
    with pytest.raises(InputError, match=r"format '\.xyz' \(folder, \.ply, \.npy or \.npz\)"):
        load_points(tmp_path / "a.xyz")
    monkeypatch.setitem(FILE_READERS, ".xyz", read_xyz)
    pts = load_points(tmp_path / "a.xyz")
    np.testing.assert_array_equal(pts.coord, [[0, 0, 0], [1, 2, 3]])
    (tmp_path / "b.txt").write_text("x")
    with pytest.raises(InputError, match=r"\(folder, \.ply, \.npy, \.npz or \.xyz\)"):
        load_points(tmp_path / "b.txt")
