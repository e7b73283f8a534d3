"""PLY, raw ScanNet scenes, the preprocessed layout, RGB-D frames; ``pointprobe preprocess``."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from common.errors import InputError
from pointprobe.data import frames as fr
from pointprobe.data.ply import read_ply, write_ply
from pointprobe.data.scannet import (
    CLASS_LABELS_20,
    CLASS_LABELS_200,
    VALID_CLASS_IDS_20,
    VALID_CLASS_IDS_200,
    Scene,
    labels_from_annotations,
    list_scenes,
    load_scene,
    read_aggregation,
    read_label_map,
    read_raw_scene,
    read_segs,
    save_scene,
    vertex_normals,
)

ASCII_PLY = """ply
format ascii 1.0
comment four vertices, two triangles
element vertex 4
property float x
property float y
property float z
property uchar red
property uchar green
property uchar blue
property ushort label
element face 2
property list uchar int vertex_indices
end_header
0 0 0 255 0 0 1
1 0 0 0 255 0 2
1 1 0 0 0 255 3
0 1 0.5 10 20 30 5
3 0 1 2
3 0 2 3
"""

TSV = (
    "id\traw_category\tcategory\tcount\tnyu40id\teigen13id\tnyuClass\tnyu40class\n"
    "1\twall\twall\t8277\t1\t12\twall\twall\n"
    "2\tchair\tchair\t4646\t5\t4\tchair\tchair\n"
    "10\toffice chair\toffice chair\t595\t5\t4\tchair\tchair\n"
    "13\tpillow\tpillow\t900\t18\t7\tpillow\tpillow\n"
    "26\tbox\tbox\t700\t29\t7\tbox\tbox\n"
)


def _binary_ply(verts: list[tuple], faces: list[list[int]], n_vertices_header: int | None = None) -> bytes:
    """Binary little-endian PLY like ScanNet's (x,y,z float; r,g,b,a uchar; faces uchar/int), by hand."""
    nv = len(verts) if n_vertices_header is None else n_vertices_header
    head = (
        "ply\nformat binary_little_endian 1.0\ncomment VCGLIB generated\n"
        f"element vertex {nv}\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nproperty uchar alpha\n"
        f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    ).encode()
    body = b"".join(struct.pack("<fffBBBB", *v) for v in verts)
    body += b"".join(struct.pack("<B" + "i" * len(f), len(f), *f) for f in faces)
    return head + body


# ------------------------------------------------------------------------------------------------ PLY
def test_ascii_ply_read(tmp_path):
    p = tmp_path / "a.ply"
    p.write_text(ASCII_PLY)
    m = read_ply(p)
    assert len(m) == 4 and m.comments == ["four vertices, two triangles"]
    np.testing.assert_array_equal(m.coord, [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0.5]])
    np.testing.assert_array_equal(m.color, [[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]])
    np.testing.assert_array_equal(m.vertex["label"], [1, 2, 3, 5])
    np.testing.assert_array_equal(m.faces, [[0, 1, 2], [0, 2, 3]])
    assert m.normal is None


def test_binary_ply_read_triangles_and_polygons(tmp_path):
    verts = [
        (0, 0, 0, 1, 2, 3, 255),
        (1, 0, 0, 4, 5, 6, 255),
        (1, 1, 0, 7, 8, 9, 255),
        (0, 1, 0, 10, 11, 12, 255),
    ]
    p = tmp_path / "tri.ply"
    p.write_bytes(_binary_ply(verts, [[0, 1, 2], [0, 2, 3]]))
    m = read_ply(p)
    np.testing.assert_array_equal(m.coord, [v[:3] for v in verts])
    np.testing.assert_array_equal(m.color, [v[3:6] for v in verts])
    np.testing.assert_array_equal(m.vertex["alpha"], [255] * 4)
    np.testing.assert_array_equal(m.faces, [[0, 1, 2], [0, 2, 3]])
    # mixed quad + triangle: general path, quads fan-triangulated
    q = tmp_path / "quad.ply"
    q.write_bytes(_binary_ply(verts, [[0, 1, 2, 3], [1, 2, 3]]))
    np.testing.assert_array_equal(read_ply(q).faces, [[0, 1, 2], [0, 2, 3], [1, 2, 3]])


@pytest.mark.parametrize("binary", [True, False])
def test_ply_round_trip_matches_open3d(tmp_path, binary):
    o3d = pytest.importorskip("open3d")
    rng = np.random.default_rng(0)
    n = 200
    coord = rng.normal(size=(n, 3)).astype(np.float32)
    color = rng.integers(0, 256, (n, 3)).astype(np.uint8)
    faces = rng.integers(0, n, (300, 3))
    p = write_ply(
        tmp_path / "m.ply",
        {
            "x": coord[:, 0],
            "y": coord[:, 1],
            "z": coord[:, 2],
            "red": color[:, 0],
            "green": color[:, 1],
            "blue": color[:, 2],
        },
        faces,
        binary=binary,
    )
    m = read_ply(p)
    np.testing.assert_allclose(m.coord, coord, rtol=1e-6)
    np.testing.assert_array_equal(m.color, color)
    np.testing.assert_array_equal(m.faces, faces)
    ref = o3d.io.read_triangle_mesh(str(p))
    np.testing.assert_allclose(np.asarray(ref.vertices), m.coord, rtol=1e-6)
    np.testing.assert_array_equal(np.round(np.asarray(ref.vertex_colors) * 255).astype(np.uint8), m.color)
    np.testing.assert_array_equal(np.asarray(ref.triangles), m.faces)


def test_write_ply_converts_types_and_rejects_bad_columns(tmp_path):
    p = write_ply(
        tmp_path / "t.ply", {"x": np.zeros(3), "label": np.array([1, 2, -3]), "ok": np.ones(3, bool)}
    )
    m = read_ply(p)
    assert m.vertex.dtype["label"] == np.int32 and m.vertex.dtype["ok"] == np.uint8
    np.testing.assert_array_equal(m.vertex["label"], [1, 2, -3])
    with pytest.raises(ValueError, match="do not fit"):
        write_ply(tmp_path / "u.ply", {"x": np.array([2**40])})
    with pytest.raises(ValueError, match="has 2 rows, expected 3"):
        write_ply(tmp_path / "v.ply", {"x": np.zeros(3), "y": np.zeros(2)})


def test_ply_truncated_and_corrupt(tmp_path):
    verts = [(0, 0, 0, 1, 2, 3, 255)] * 3
    p = tmp_path / "trunc.ply"
    p.write_bytes(_binary_ply(verts, [], n_vertices_header=81369))
    with pytest.raises(InputError) as e:
        read_ply(p)
    assert str(e.value) == f"{p}: truncated: header promises 81369 vertices, file holds 3"
    data = _binary_ply(verts, [[0, 1, 2], [0, 1, 2], [0, 1, 2]])
    (tmp_path / "tf.ply").write_bytes(data[:-7])  # last face cut short
    with pytest.raises(InputError, match=r"truncated: header promises 3 faces, file holds 2"):
        read_ply(tmp_path / "tf.ply")
    (tmp_path / "bad.ply").write_bytes(b"plx\nformat ascii 1.0\n")
    with pytest.raises(InputError, match="not a PLY file"):
        read_ply(tmp_path / "bad.ply")
    (tmp_path / "nohdr.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\n")
    with pytest.raises(InputError, match="end_header"):
        read_ply(tmp_path / "nohdr.ply")
    (tmp_path / "short.ply").write_text(ASCII_PLY.replace("element vertex 4", "element vertex 9"))
    with pytest.raises(InputError, match="header promises 9 vertices, file holds 6"):
        read_ply(tmp_path / "short.ply")
    (tmp_path / "idx.ply").write_bytes(_binary_ply(verts, [[0, 1, 7]]))
    with pytest.raises(InputError, match="face index out of range"):
        read_ply(tmp_path / "idx.ply")
    with pytest.raises(InputError, match="file not found"):
        read_ply(tmp_path / "missing.ply")


# ------------------------------------------------------------------------------------------- normals
def test_vertex_normals_match_a_loop_reference():
    rng = np.random.default_rng(1)
    coord = rng.normal(size=(60, 3))
    faces = np.array([rng.choice(59, 3, replace=False) for _ in range(150)])  # vertex 59 is in no face
    ref = np.zeros((60, 3))
    for f in faces:  # area-weighted: unit face normal times area
        n = np.cross(coord[f[1]] - coord[f[0]], coord[f[2]] - coord[f[0]])
        area = 0.5 * np.linalg.norm(n)
        for v in f:
            ref[v] += n / np.linalg.norm(n) * area
    ref[:59] /= np.linalg.norm(ref[:59], axis=1, keepdims=True)
    out = vertex_normals(coord, faces)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out[:59], axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(out[59], 0)


# ---------------------------------------------------------------------------------------- raw scenes
def _write_raw_scene(
    root: Path, name: str, coord=None, seg=None, groups=None, labels=True, sub="scans"
) -> Path:
    """A tiny raw ScanNet scene: 6 vertices (floor quad, wall triangle pair), faces, segs, aggregation."""
    d = root / sub / name
    d.mkdir(parents=True)
    if coord is None:
        coord = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1], [1, 1, 1]], np.float32)
    n = len(coord)
    color = (np.arange(n * 3).reshape(n, 3) * 7 % 256).astype(np.uint8)
    faces = (
        np.array([[0, 1, 2], [0, 2, 3], [3, 2, 5], [3, 5, 4]])[: max(0, n - 2)]
        if n >= 6
        else np.zeros((0, 3))
    )
    write_ply(
        d / f"{name}_vh_clean_2.ply",
        {
            "x": coord[:, 0],
            "y": coord[:, 1],
            "z": coord[:, 2],
            "red": color[:, 0],
            "green": color[:, 1],
            "blue": color[:, 2],
            "alpha": np.full(n, 255, np.uint8),
        },
        faces.astype(int),
    )
    if labels:
        seg = [0, 0, 2, 2, 4, 4] if seg is None else seg
        (d / f"{name}_vh_clean_2.0.010000.segs.json").write_text(json.dumps({"segIndices": seg}))
        groups = (
            groups
            if groups is not None
            else [
                {"id": 0, "objectId": 0, "segments": [0], "label": "chair"},
                {"id": 1, "objectId": 7, "segments": [4, 99], "label": "wall"},
            ]
        )
        (d / f"{name}.aggregation.json").write_text(json.dumps({"segGroups": groups}))
    return d


def _raw_root(tmp_path: Path) -> Path:
    root = tmp_path / "raw"
    root.mkdir()
    (root / "scannetv2-labels.combined.tsv").write_text(TSV)
    return root


def test_label_map_and_annotation_files(tmp_path):
    p = tmp_path / "labels.tsv"
    p.write_text(TSV)
    lm = read_label_map(p)
    assert lm.segment20("wall") == 0 and lm.segment20("chair") == 4 and lm.segment20("office chair") == 4
    assert lm.segment20("pillow") == -1 and lm.segment20("never seen") == -1
    assert lm.segment200("chair") == CLASS_LABELS_200.index("chair") == 1
    assert lm.segment200("box") == CLASS_LABELS_200.index("box")
    assert lm.segment200("never seen") == -1
    bad = tmp_path / "bad.tsv"
    bad.write_text("id\tcategory\n1\twall\n")
    with pytest.raises(InputError, match=r"bad\.tsv: missing column\(s\) raw_category, nyu40id"):
        read_label_map(bad)
    s = tmp_path / "x.segs.json"
    s.write_text('{"segIndices": [3, 3, 5]}')
    np.testing.assert_array_equal(read_segs(s), [3, 3, 5])
    s.write_text('{"segIndices": [3, 3,')
    with pytest.raises(InputError, match="corrupt JSON"):
        read_segs(s)
    a = tmp_path / "x.aggregation.json"
    a.write_text('{"segGroups": [{"id": 0, "segments": [1]}]}')
    with pytest.raises(InputError, match="lacks 'segments' or 'label'"):
        read_aggregation(a)


def test_benchmark_constants():
    assert len(VALID_CLASS_IDS_200) == len(set(VALID_CLASS_IDS_200)) == 200
    assert list(VALID_CLASS_IDS_200) == sorted(VALID_CLASS_IDS_200)
    assert CLASS_LABELS_20[VALID_CLASS_IDS_20.index(39)] == "otherfurniture"
    assert CLASS_LABELS_200[:4] == ("wall", "chair", "floor", "table") and CLASS_LABELS_200[-1] == "mattress"


def test_read_raw_scene_labels(tmp_path):
    root = _raw_root(tmp_path)
    d = _write_raw_scene(root, "scene0000_00")
    lm = read_label_map(root / "scannetv2-labels.combined.tsv")
    s = read_raw_scene(d, lm)
    assert s.labelled and s.name == "scene0000_00" and len(s) == 6
    np.testing.assert_array_equal(s.segment20, [4, 4, -1, -1, 0, 0])
    np.testing.assert_array_equal(s.segment200, [1, 1, -1, -1, 0, 0])
    np.testing.assert_array_equal(s.instance, [0, 0, -1, -1, 7, 7])  # objectId; segment 99 does not exist
    np.testing.assert_allclose(s.normal[0], [0, 0, 1], atol=1e-6)  # floor vertex
    np.testing.assert_allclose(
        s.normal[4], [0, -1, 0], atol=1e-6
    )  # wall-only vertex (faces wound towards -y)
    assert s.color.dtype == np.uint8 and s.coord.dtype == np.float32
    # later groups win, as in Pointcept
    sem20, _, inst = labels_from_annotations(
        np.array([5, 5, 6]),
        [
            {"objectId": 1, "segments": [5, 6], "label": "wall"},
            {"objectId": 2, "segments": [6], "label": "chair"},
        ],
        lm,
    )
    np.testing.assert_array_equal(sem20, [0, 0, 4])
    np.testing.assert_array_equal(inst, [1, 1, 2])


def test_read_raw_scene_errors_name_the_file(tmp_path):
    root = _raw_root(tmp_path)
    lm = read_label_map(root / "scannetv2-labels.combined.tsv")
    d = _write_raw_scene(root, "scene0001_00", seg=[0, 0, 2, 2])
    with pytest.raises(InputError, match=r"segs\.json: 4 segment ids for 6 mesh vertices"):
        read_raw_scene(d, lm)
    nan = np.array([[0, 0, 0], [1, 0, 0], [np.nan, 1, 0], [0, 1, 0], [0, 1, 1], [1, 1, 1]], np.float32)
    d = _write_raw_scene(root, "scene0002_00", coord=nan)
    with pytest.raises(InputError, match=r"scene0002_00_vh_clean_2\.ply: 1 vertices with NaN"):
        read_raw_scene(d, lm)
    d = _write_raw_scene(root, "scene0003_00", coord=np.zeros((0, 3), np.float32), seg=[])
    with pytest.raises(InputError, match=r"scene0003_00_vh_clean_2\.ply: empty scene"):
        read_raw_scene(d, lm)
    d = _write_raw_scene(root, "scene0004_00")
    (d / "scene0004_00_vh_clean_2.ply").unlink()
    with pytest.raises(InputError, match=r"scene0004_00_vh_clean_2\.ply: file not found"):
        read_raw_scene(d, lm)
    d = _write_raw_scene(root, "scene0005_00")
    (d / "scene0005_00.aggregation.json").unlink()
    with pytest.raises(InputError, match=r"scene0005_00\.aggregation\.json: file not found"):
        read_raw_scene(d, lm, with_labels=True)
    assert not read_raw_scene(d, lm).labelled  # labels optional by default (test scenes)


# ------------------------------------------------------------------------------ preprocessed layout
def _scene(n=50, seed=0, name="scene0000_00") -> Scene:
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=(n, 3))
    return Scene(
        name,
        rng.normal(size=(n, 3)).astype(np.float32),
        rng.integers(0, 256, (n, 3)).astype(np.uint8),
        (normal / np.linalg.norm(normal, axis=1, keepdims=True)).astype(np.float32),
        rng.integers(-1, 20, n),
        rng.integers(-1, 200, n),
        rng.integers(-1, 5, n),
    )


def test_save_and_load_scene(tmp_path):
    s = _scene()
    folder = save_scene(s, tmp_path / "train" / s.name)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{k}.npy" for k in ("coord", "color", "normal", "segment20", "segment200", "instance")
    )
    assert not [p for p in (tmp_path / "train").iterdir() if p.name.startswith(".")]  # no temp folder left
    t = load_scene(folder)
    for k in ("coord", "color", "normal", "segment20", "segment200", "instance"):
        np.testing.assert_array_equal(getattr(t, k), getattr(s, k))
    assert t.labelled and t.segment20.dtype == np.int64
    assert list_scenes(tmp_path, "train") == [s.name]
    unl = _scene(name="scene0009_00")
    unl.labelled = False
    t = load_scene(save_scene(unl, tmp_path / "test" / unl.name))
    assert not t.labelled and (t.segment20 == -1).all() and (t.instance == -1).all()


def test_load_scene_validation(tmp_path):
    folder = save_scene(_scene(), tmp_path / "s")
    np.save(folder / "segment20.npy", np.zeros(49, np.int32))
    with pytest.raises(InputError, match=r"segment20 has shape \(49,\), expected \(50,\)"):
        load_scene(folder)
    folder = save_scene(_scene(), tmp_path / "s")
    c = np.load(folder / "coord.npy")
    c[3, 1] = np.nan
    np.save(folder / "coord.npy", c)
    with pytest.raises(InputError, match=r"s: coord holds 1 rows with NaN"):
        load_scene(folder)
    folder = save_scene(_scene(), tmp_path / "s")
    (folder / "normal.npy").unlink()
    with pytest.raises(InputError, match=r"normal\.npy: file not found"):
        load_scene(folder)
    folder = save_scene(_scene(), tmp_path / "s")
    (folder / "instance.npy").unlink()
    with pytest.raises(InputError, match=r"instance\.npy: file not found \(other label files exist\)"):
        load_scene(folder)
    folder = save_scene(_scene(), tmp_path / "s")
    (folder / "color.npy").write_bytes((folder / "color.npy").read_bytes()[:100])
    with pytest.raises(InputError, match=r"color\.npy: cannot read array"):
        load_scene(folder)
    empty = _scene(n=0)
    with pytest.raises(InputError, match="empty scene"):
        load_scene(save_scene(empty, tmp_path / "e"))
    with pytest.raises(InputError, match="scene folder not found"):
        load_scene(tmp_path / "nope")


def test_list_scenes_of_a_split(tmp_path):
    """The split listing every reader loop uses (the test-only ``ScanNetDataset`` wrapper is gone)."""
    for i in (2, 0, 1):
        save_scene(_scene(seed=i, name=f"scene000{i}_00"), tmp_path / "val" / f"scene000{i}_00")
    (tmp_path / "val" / ".tmp-scene0003_00").mkdir()
    assert list_scenes(tmp_path, "val") == ["scene0000_00", "scene0001_00", "scene0002_00"]
    one = load_scene(tmp_path / "val" / "scene0001_00")
    np.testing.assert_array_equal(one.segment20, _scene(seed=1).segment20)
    with pytest.raises(InputError, match="split folder 'train' not found"):
        list_scenes(tmp_path, "train")


# ------------------------------------------------------------------------------------- preprocess
def test_preprocess_continues_past_a_bad_scene(tmp_path, capsys):
    from pointprobe.cli import main

    root = _raw_root(tmp_path)
    _write_raw_scene(root, "scene0000_00")
    _write_raw_scene(root, "scene0001_00", seg=[0, 0, 2])  # label count != vertex count
    _write_raw_scene(root, "scene0002_00")
    _write_raw_scene(root, "scene0003_00", labels=False, sub="scans_test")  # unlabelled test scene
    (root / "scannetv2_train.txt").write_text("scene0000_00\nscene0001_00\n")
    (root / "scannetv2_val.txt").write_text("scene0002_00\n")
    (root / "scannetv2_test.txt").write_text("scene0003_00\n")
    out = tmp_path / "pre"
    rc = main(["preprocess", "--raw", str(root), "--out", str(out), "--workers", "1", "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 1
    assert "3 written" in cap.out and "1 failed" in cap.out
    assert "train/scene0001_00:" in cap.err and "3 segment ids for 6 mesh vertices" in cap.err
    assert cap.err.count("scene0001_00_vh_clean_2.0.010000.segs.json") == 2  # when it happens + summary
    assert list_scenes(out, "train") == ["scene0000_00"] and list_scenes(out, "val") == ["scene0002_00"]
    t = load_scene(out / "test" / "scene0003_00")
    assert not t.labelled
    np.testing.assert_array_equal(load_scene(out / "val" / "scene0002_00").segment20, [4, 4, -1, -1, 0, 0])
    summary = json.loads((out / "preprocess.json").read_text())
    assert summary["counts"] == {"done": 3, "skipped": 0, "failed": 1}
    # resume: complete scenes are skipped, the fixed scene is written
    seg = root / "scans" / "scene0001_00" / "scene0001_00_vh_clean_2.0.010000.segs.json"
    seg.write_text(json.dumps({"segIndices": [0] * 6}))
    rc = main(["preprocess", "--raw", str(root), "--out", str(out), "--workers", "2", "--no-progress"])
    assert rc == 0 and "1 written" in capsys.readouterr().out
    assert list_scenes(out, "train") == ["scene0000_00", "scene0001_00"]


def test_preprocess_missing_split_file_is_a_one_line_error(tmp_path, capsys):
    # the root has its own lists (val only): a split asked for by name without its file is an error
    from pointprobe.cli import main

    root = _raw_root(tmp_path)
    _write_raw_scene(root, "scene0002_00")
    (root / "scannetv2_val.txt").write_text("scene0002_00\n")
    rc = main(["preprocess", "--raw", str(root), "--out", str(tmp_path / "o"), "--splits", "train"])
    assert rc == 2
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.startswith("error")]
    assert len(err) == 1 and "scannetv2_train.txt: split file not found" in err[0]
    assert not (tmp_path / "o").exists()


def test_preprocess_default_processes_present_splits_and_names_the_skipped(tmp_path, capsys):
    # issue 12 item 4: by default the splits whose files exist are processed, the others named as skipped
    from pointprobe.cli import main

    root = _raw_root(tmp_path)
    _write_raw_scene(root, "scene0000_00")
    _write_raw_scene(root, "scene0002_00")
    (root / "scannetv2_train.txt").write_text("scene0000_00\n")
    (root / "scannetv2_val.txt").write_text("scene0002_00\n")  # no scannetv2_test.txt
    out = tmp_path / "pre"
    rc = main(["preprocess", "--raw", str(root), "--out", str(out), "--workers", "1", "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 0 and "2 written" in cap.out
    assert f"split test: skipped (no scannetv2_test.txt in {root})" in cap.err
    assert list_scenes(out, "train") == ["scene0000_00"] and list_scenes(out, "val") == ["scene0002_00"]
    summary = json.loads((out / "preprocess.json").read_text())
    assert summary["splits"] == ["train", "val"] and list(summary["skipped_splits"]) == ["test"]
    assert summary["split_lists"] == str(root)


def _shipped(name: str) -> list[str]:
    from pointprobe.data.scannet import read_split_file, shipped_meta_file

    return read_split_file(shipped_meta_file(name))


def test_shipped_scannet_meta_is_the_official_data():
    from importlib.resources import files

    from pointprobe.data.scannet import LABEL_TABLE, shipped_meta_file

    counts = {s: len(_shipped(f"scannetv2_{s}.txt")) for s in ("train", "val", "test")}
    assert counts == {"train": 1201, "val": 312, "test": 100}
    train, val, test = (set(_shipped(f"scannetv2_{s}.txt")) for s in ("train", "val", "test"))
    assert len(train | val | test) == 1613 and not (train & val) and not (test & (train | val))
    assert "scene0000_00" in train and "scene0011_00" in val and "scene0707_00" in test
    lm = read_label_map(shipped_meta_file(LABEL_TABLE))
    assert len(lm.raw_to_id) == 606  # 607 rows, one raw category listed twice
    assert lm.segment20("wall") == 0 and lm.segment20("office chair") == 4 and lm.segment20("pillow") == -1
    assert lm.segment200("mattress") == 199
    # found through importlib.resources, i.e. declared as package data next to the module
    assert files("pointprobe.data").joinpath("scannet_meta", LABEL_TABLE).is_file()
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["pointprobe.data"]
    assert "scannet_meta/*.txt" in globs and "scannet_meta/*.tsv" in globs


def test_preprocess_without_split_files_uses_the_shipped_lists(tmp_path, capsys):
    # a raw root as downloaded: scans/ and scans_test/ only, no split files, no label table
    from pointprobe.cli import main

    root = tmp_path / "raw"
    train, val, test = _shipped("scannetv2_train.txt")[:2], _shipped("scannetv2_val.txt")[:1], \
        _shipped("scannetv2_test.txt")[:1]
    for name in train + val:
        _write_raw_scene(root, name, groups=[{"id": 0, "objectId": 0, "segments": [0], "label": "chair"}])
    _write_raw_scene(root, test[0], labels=False, sub="scans_test")
    _write_raw_scene(root, "scene9999_00")  # in no official list
    out = tmp_path / "pre"
    rc = main(["preprocess", "--raw", str(root), "--out", str(out), "--workers", "1", "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 0 and "4 written" in cap.out
    assert "using the official ScanNet v2 lists shipped with pointprobe (pointprobe/data/scannet_meta/" \
        in cap.err
    assert "using the copy shipped with pointprobe (pointprobe/data/scannet_meta/scannetv2-labels" in cap.err
    assert "split train: 2 of the 1201 listed scenes are on disk; the other 1199 are not processed" in cap.err
    assert "1 scene(s) on disk are in no split list and were not processed: scene9999_00" in cap.err
    assert list_scenes(out, "train") == sorted(train) and list_scenes(out, "val") == val
    assert list_scenes(out, "test") == test and not load_scene(out / "test" / test[0]).labelled
    assert not any((out / s / "scene9999_00").exists() for s in ("train", "val", "test"))
    np.testing.assert_array_equal(load_scene(out / "train" / train[0]).segment20, [4, 4, -1, -1, -1, -1])
    summary = json.loads((out / "preprocess.json").read_text())
    assert summary["unlisted"] == ["scene9999_00"] and summary["not_on_disk"]["val"] == 311
    assert summary["split_lists"] == "pointprobe/data/scannet_meta"

    # a split asked for by name with none of its scenes on disk is a one-line error
    import shutil

    shutil.rmtree(root / "scans_test")
    rc = main(["preprocess", "--raw", str(root), "--out", str(out), "--splits", "train,test"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
    assert rc == 2 and len(err) == 1
    assert "split 'test' was asked for but none of the 100 scenes of the official scannetv2_test.txt" \
        in err[0]
    # by default it is skipped and named
    rc = main(["preprocess", "--raw", str(root), "--out", str(out), "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 0 and "3 already complete" in cap.out and "split test: skipped (none of the 100" in cap.err


def test_preprocess_writes_int64_labels_and_reads_int32(tmp_path):
    # issue 20 item 4: Pointcept writes int64; torch cross_entropy needs int64 targets
    from pointprobe.data.scannet_preprocess import preprocess_dataset

    root = _raw_root(tmp_path)
    _write_raw_scene(root, "scene0000_00")
    (root / "scannetv2_train.txt").write_text("scene0000_00\n")
    preprocess_dataset(root, tmp_path / "pre", progress=False, log=lambda m: None)
    folder = tmp_path / "pre" / "train" / "scene0000_00"
    for key in ("segment20", "segment200", "instance"):
        assert np.load(folder / f"{key}.npy").dtype == np.int64
    ref = load_scene(folder)
    for key in ("segment20", "segment200", "instance"):  # files of an older run (int32) still load
        np.save(folder / f"{key}.npy", np.load(folder / f"{key}.npy").astype(np.int32))
    old = load_scene(folder)
    for key in ("segment20", "segment200", "instance"):
        assert getattr(old, key).dtype == np.int64
        np.testing.assert_array_equal(getattr(old, key), getattr(ref, key))


def test_instance_ids_are_object_ids_of_the_benchmark_export(tmp_path):
    # issue 20 item 5: an aggregation file (real layout) whose "id" and "objectId" differ; the ScanNet
    # benchmark's export_train_mesh_for_evaluation.py reads objectId (Pointcept reads id)
    from pointprobe.data.scannet_preprocess import preprocess_dataset

    root = _raw_root(tmp_path)
    groups = [
        {"id": 3, "objectId": 0, "segments": [0], "label": "chair"},
        {"id": 5, "objectId": 1, "segments": [4], "label": "wall"},
    ]
    d = _write_raw_scene(root, "scene0000_00", groups=groups)
    agg = {"sceneId": "scannet.scene0000_00", "appId": "Annotator.v1", "segGroups": groups,
           "segmentsFile": "scannet.scene0000_00_vh_clean_2.0.010000.segs.json"}
    (d / "scene0000_00.aggregation.json").write_text(json.dumps(agg))
    (root / "scannetv2_train.txt").write_text("scene0000_00\n")
    preprocess_dataset(root, tmp_path / "pre", progress=False, log=lambda m: None)
    inst = np.load(tmp_path / "pre" / "train" / "scene0000_00" / "instance.npy")
    np.testing.assert_array_equal(inst, [0, 0, -1, -1, 1, 1])  # objectId, not id (would be 3, 5)
    # a group without objectId falls back to id
    _, _, inst = labels_from_annotations(np.array([0, 4]), [{"id": 5, "segments": [4], "label": "wall"}],
                                         read_label_map(root / "scannetv2-labels.combined.tsv"))
    np.testing.assert_array_equal(inst, [-1, 5])


# ------------------------------------------------------------------------------------------ frames
def test_frames_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:24, 0:32]
    color = np.stack([xx * 8, yy * 10, np.full_like(xx, 128)], -1).astype(np.uint8)  # smooth: JPEG keeps it
    depth = rng.uniform(0.5, 6.0, (24, 32)).astype(np.float32)
    depth[0, 0] = 0
    pose = np.eye(4)
    pose[:3, 3] = [1, 2, 3]
    K = np.array([[30.0, 0, 15.5], [0, 30.0, 11.5], [0, 0, 1]])
    fr.write_intrinsics(tmp_path, K)
    for i in range(3):
        fr.write_frame(tmp_path, i * 20, color, depth, pose if i != 1 else np.full((4, 4), -np.inf))
    assert fr.frame_indices(tmp_path) == [0, 20, 40]
    np.testing.assert_allclose(fr.read_intrinsics(tmp_path, "depth"), K)
    f = fr.read_frame(tmp_path, 0)
    np.testing.assert_allclose(f.depth, np.round(depth * 1000) / 1000, atol=1e-6)
    assert f.color.shape == (24, 32, 3) and np.abs(f.color.astype(int) - color).mean() < 4  # JPEG is lossy
    np.testing.assert_allclose(f.pose, pose)
    assert [g.index for g in fr.iter_frames(tmp_path)] == [0, 40]  # the -inf pose is skipped
    # back-projection: a pixel at depth z lands at K^-1 [u v 1] z, moved by the pose
    pts, uv = fr.backproject_depth(f.depth, K, f.pose)
    k = 5
    u, v = uv[k]
    z = f.depth[v, u]
    np.testing.assert_allclose(pts[k], [(u - 15.5) / 30 * z + 1, (v - 11.5) / 30 * z + 2, z + 3], atol=1e-9)
    K2 = fr.scale_intrinsics(K, (32, 24), (64, 48))
    np.testing.assert_allclose(K2, [[60, 0, 31.5], [0, 60, 23.5], [0, 0, 1]])
    (tmp_path / "pose" / "40.txt").write_text("1 2 3")
    with pytest.raises(InputError, match=r"40\.txt: expected a 4x4 matrix"):
        fr.read_frame(tmp_path, 40)


def test_class_names_of_a_label_set():
    from pointprobe.data.scannet import class_names

    assert class_names("segment20") == CLASS_LABELS_20 and class_names("segment200") == CLASS_LABELS_200
    with pytest.raises(InputError, match="label set 'instance' has no class list"):
        class_names("instance")
