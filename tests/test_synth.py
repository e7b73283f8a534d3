"""Synthetic ScanNet-like scenes: raw format, round trip through preprocess, determinism, rendered frames."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from pointprobe.data import frames as fr
from pointprobe.data.ply import read_ply
from pointprobe.data.scannet import VALID_CLASS_IDS_20, list_scenes, load_scene, read_label_map
from pointprobe.synth import camera_intrinsics, generate_dataset, generate_scene, render_frames

SEED = 3
N_SCENES = 5


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    """5 scenes (one per room type), 4 frames each at 160x120, generated and preprocessed via the CLI."""
    from pointprobe.cli import main

    root = tmp_path_factory.mktemp("synth")
    raw, pre = root / "raw", root / "pre"
    args = [
        "--scenes",
        str(N_SCENES),
        "--seed",
        str(SEED),
        "--frames-per-scene",
        "4",
        "--image-size",
        "160x120",
    ]
    assert main(["synth", "--out", str(raw), *args, "--no-progress"]) == 0
    assert main(["preprocess", "--raw", str(raw), "--out", str(pre), "--workers", "1", "--no-progress"]) == 0
    return raw, pre


def _all_scenes(pre: Path):
    return [load_scene(pre / s / n) for s in ("train", "val", "test") for n in list_scenes(pre, s)]


def test_layout_and_splits(data):
    raw, pre = data
    names = sorted(p.name for p in (raw / "scans").iterdir())
    assert names == [f"scene{i:04d}_00" for i in range(N_SCENES)]
    splits = {s: (raw / f"scannetv2_{s}.txt").read_text().split() for s in ("train", "val", "test")}
    assert sorted(sum(splits.values(), [])) == names
    assert [len(splits[s]) for s in ("train", "val", "test")] == [3, 1, 1]
    for s, lst in splits.items():
        assert list_scenes(pre, s) == sorted(lst)
    d = raw / "scans" / names[0]
    for f in (
        "_vh_clean_2.ply",
        "_vh_clean_2.labels.ply",
        "_vh_clean_2.0.010000.segs.json",
        ".aggregation.json",
        ".txt",
    ):
        assert (d / f"{names[0]}{f}").is_file(), f
    header = (raw / "scannetv2-labels.combined.tsv").read_text().splitlines()[0].split("\t")
    assert header == ["id", "raw_category", "category", "count", "nyu40id", "nyu40class"]


def test_round_trip_labels_cover_the_benchmark(data):
    raw, pre = data
    scenes = _all_scenes(pre)
    classes = set()
    for s in scenes:
        assert s.labelled  # test scenes keep their labels in the generated data
        assert 20_000 <= len(s) <= 100_000, (s.name, len(s))
        assert s.segment20.max() <= 19 and s.segment200.max() <= 199
        np.testing.assert_allclose(np.linalg.norm(s.normal, axis=1), 1, atol=1e-4)
        # the aggregation-derived labels agree with the per-vertex nyu40 labels of the .labels.ply
        lab = read_ply(raw / "scans" / s.name / f"{s.name}_vh_clean_2.labels.ply")
        np.testing.assert_array_equal(lab.coord, s.coord)
        nyu = lab.vertex["label"].astype(int)
        expect20 = np.array(
            [VALID_CLASS_IDS_20.index(v) if v in VALID_CLASS_IDS_20 else -1 for v in range(41)]
        )
        np.testing.assert_array_equal(s.segment20, expect20[nyu])
        assert ((s.instance >= 0) == (nyu > 0)).all()
        assert (s.segment200[nyu > 0] >= 0).all()
        classes |= set(np.unique(s.segment20[s.segment20 >= 0]).tolist())
    assert len(classes) >= 12, sorted(classes)
    lm = read_label_map(raw / "scannetv2-labels.combined.tsv")
    assert (
        lm.segment20("couch") == 5
        and lm.segment20("kitchen counter") == 11
        and lm.segment20("tv stand") == 19
    )


def test_colour_alone_does_not_give_the_class(data):
    """A kNN on colour transfers far worse across scenes than one on two crude geometric cues."""
    from sklearn.neighbors import KNeighborsClassifier

    _, pre = data
    train = [load_scene(pre / "train" / n) for n in list_scenes(pre, "train")]
    held = [load_scene(pre / s / n) for s in ("val", "test") for n in list_scenes(pre, s)]

    def feats(s, kind):
        if kind == "colour":
            return s.color / 255.0
        return np.column_stack([np.abs(s.normal[:, 2]), s.coord[:, 2] - np.percentile(s.coord[:, 2], 1)])

    def miou(kind):
        X = np.concatenate([feats(s, kind) for s in train])
        y = np.concatenate([s.segment20 for s in train])
        Xh = np.concatenate([feats(s, kind) for s in held])
        yh = np.concatenate([s.segment20 for s in held])
        m, mh = y >= 0, yh >= 0
        p = KNeighborsClassifier(15).fit(X[m][::8], y[m][::8]).predict(Xh[mh][::6])
        t = yh[mh][::6]
        return np.mean([((p == c) & (t == c)).sum() / ((p == c) | (t == c)).sum() for c in np.unique(t)])

    colour, geometry = miou("colour"), miou("geometry")
    assert colour < 0.15 and colour < geometry - 0.05, (colour, geometry)


def test_rendered_depth_lands_on_the_mesh(data):
    o3d = pytest.importorskip("open3d")
    raw, _ = data
    for name in sorted(p.name for p in (raw / "scans").iterdir())[:3]:
        d = raw / "scans" / name
        mesh = read_ply(d / f"{name}_vh_clean_2.ply")
        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(o3d.core.Tensor(mesh.coord), o3d.core.Tensor(mesh.faces.astype(np.uint32)))
        K = fr.read_intrinsics(d, "depth")
        frame_ids = fr.frame_indices(d)
        assert len(frame_ids) == 4
        lo, hi = mesh.coord.min(0), mesh.coord.max(0)
        for f in fr.iter_frames(d):
            assert f.color.shape == (120, 160, 3) and f.depth.shape == (120, 160)
            R = f.pose[:3, :3]
            np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-5)
            assert np.linalg.det(R) > 0.99
            c = f.pose[:3, 3]
            assert (c[:2] > lo[:2]).all() and (c[:2] < hi[:2]).all() and 1.1 < c[2] - lo[2] < 1.8
            assert (f.depth > 0).mean() > 0.6
            pts, _ = fr.backproject_depth(f.depth, K, f.pose)
            dist = scene.compute_distance(o3d.core.Tensor(pts.astype(np.float32))).numpy()
            # the walk path looks across whole rooms (depths up to 6 m, where the noise model's sigma is
            # ~3 cm): within 3 m the old absolute bounds hold, everywhere the error stays within the noise
            z = f.depth[f.depth > 0]  # same order as backproject_depth
            near = z < 3.0
            if near.sum() > 500:
                assert np.median(dist[near]) < 0.01 and np.percentile(dist[near], 95) < 0.04, (name, f.index)
            sigma = 0.5 * (0.0012 + 0.0019 * (z - 0.4) ** 2)
            assert np.median(dist / sigma) < 1.0 and np.percentile(dist / sigma, 95) < 3.0, (name, f.index)


def test_render_matches_a_triangle_computed_by_hand():
    pytest.importorskip("open3d")
    tri = np.array([[-1.0, -1.0, 2.0], [1.5, -1.0, 2.0], [-1.0, 1.5, 2.0]], np.float32)
    colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    K = camera_intrinsics(40, 30)
    pose = np.eye(4)  # camera at the origin looking along +z: the triangle is 2 m in front
    ((img, depth),) = render_frames(tri, np.array([[0, 1, 2]]), colors, [pose], K, 40, 30, noise=False)
    hit = depth > 0
    assert hit.sum() > 100 and (~hit).sum() > 50
    np.testing.assert_allclose(depth[hit], 2.0, atol=1e-5)
    for v, u in [(15, 20), (5, 8), (20, 12)]:
        assert hit[v, u]
        p = np.array([(u - K[0, 2]) / K[0, 0] * 2, (v - K[1, 2]) / K[1, 1] * 2])
        # barycentric weights of p in the triangle (x, y plane), then the blended colour
        A = np.column_stack([tri[1, :2] - tri[0, :2], tri[2, :2] - tri[0, :2]])
        b1, b2 = np.linalg.solve(A, p - tri[0, :2])
        expect = (1 - b1 - b2) * colors[0] + b1 * colors[1] + b2 * colors[2]
        np.testing.assert_allclose(img[v, u], expect, atol=1.0)
    assert (img[~hit] == 0).all()


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_deterministic_by_seed(tmp_path):
    a = generate_scene(11, 2, frames=2)
    b = generate_scene(11, 2, frames=2)
    for k in ("coord", "color", "faces", "seg_indices", "nyu40", "room_to_world"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert a.groups == b.groups
    c = generate_scene(12, 2, frames=2)
    assert len(c.coord) != len(a.coord) or not np.array_equal(c.coord, a.coord)
    generate_dataset(tmp_path / "x", 1, seed=11, frames_per_scene=2, image_size=(64, 48), progress=False)
    generate_dataset(tmp_path / "y", 1, seed=11, frames_per_scene=2, image_size=(64, 48), progress=False)
    dx, dy = _digest(tmp_path / "x"), _digest(tmp_path / "y")
    assert dx == dy and any(k.endswith(".png") for k in dx) and any(k.endswith(".jpg") for k in dx)


def test_synth_cli_rejects_bad_arguments(tmp_path, capsys):
    from pointprobe.cli import main

    with pytest.raises(SystemExit) as e:
        main(["synth", "--out", str(tmp_path), "--scenes", "1", "--image-size", "320by240"])
    assert e.value.code == 2 and "image size must look like 320x240" in capsys.readouterr().err
    assert main(["synth", "--out", str(tmp_path), "--scenes", "0"]) == 2
    assert "--scenes must be >= 1" in capsys.readouterr().err


def test_label_maps_agree_with_the_labels_of_the_vertices_hit(data):
    """label-filt / instance-filt hold, per pixel, the label id (label table ``id``) and objectId + 1 of
    the surface the pixel's ray hits: checked against an independent ray cast and the vertex labels."""
    o3d = pytest.importorskip("open3d")
    from PIL import Image

    raw, pre = data
    lm = read_label_map(raw / "scannetv2-labels.combined.tsv")
    id_to_nyu = np.zeros(max(lm.raw_to_id.values()) + 1, np.int64)
    for r, i in lm.raw_to_id.items():
        id_to_nyu[i] = lm.raw_to_nyu40[r]
    for split in ("train", "val"):
        for name in list_scenes(pre, split)[:1]:
            d = raw / "scans" / name
            lab = read_ply(d / f"{name}_vh_clean_2.labels.ply")
            nyu = lab.vertex["label"].astype(np.int64)
            inst = load_scene(pre / split / name).instance
            rc = o3d.t.geometry.RaycastingScene()
            rc.add_triangles(o3d.core.Tensor(lab.coord), o3d.core.Tensor(lab.faces.astype(np.uint32)))
            K = fr.read_intrinsics(d)
            u, v = np.meshgrid(np.arange(160, dtype=np.float32), np.arange(120, dtype=np.float32))
            cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
            for i in fr.frame_indices(d):
                pose = fr.read_frame(d, i).pose
                rays = np.concatenate([np.broadcast_to(pose[:3, 3], cam.shape), cam @ pose[:3, :3].T], -1)
                hit = rc.cast_rays(o3d.core.Tensor(rays.astype(np.float32)))
                prim = hit["primitive_ids"].numpy().astype(np.int64)
                valid = np.isfinite(hit["t_hit"].numpy())
                labels = np.asarray(Image.open(d / "label-filt" / f"{i}.png")).astype(np.int64)
                insts = np.asarray(Image.open(d / "instance-filt" / f"{i}.png")).astype(np.int64)
                assert labels.shape == (120, 160) and valid.mean() > 0.6
                corner = lab.faces[np.where(valid, prim, 0)]  # (H, W, 3): the hit triangle's vertices
                # a pose written with 6 decimals may move a ray across a triangle edge: allow a few pixels
                same = (id_to_nyu[labels] == nyu[corner[..., 0]]) & (insts == inst[corner[..., 0]] + 1)
                assert same[valid].mean() > 0.995, (name, i, same[valid].mean())
                assert (labels[~valid] == 0).all() and (insts[~valid] == 0).all()
                # the hit triangle's three vertices carry one label (labels are per object part)
                assert (nyu[corner[valid]] == nyu[corner[valid][:, :1]]).all()


def test_walk_camera_path_covers_the_room():
    """The default ``walk`` path (along the walls, looking inwards and across) sees far more of a room
    than the old small ``loop`` with the same frame count: vertices in a frame (10 px margin), not
    hidden (a ray from the camera reaches them), not at a grazing angle (|cos| >= 0.2)."""
    o3d = pytest.importorskip("open3d")
    from pointprobe.data.scannet import vertex_normals

    def coverage(scene) -> float:
        rc = o3d.t.geometry.RaycastingScene()
        rc.add_triangles(o3d.core.Tensor(scene.coord), o3d.core.Tensor(scene.faces.astype(np.uint32)))
        nrm = vertex_normals(scene.coord, scene.faces)
        K = camera_intrinsics(320, 240)
        seen = np.zeros(len(scene.coord), bool)
        for P in scene.camera_room_poses:
            T = scene.room_to_world @ P
            ray = scene.coord - T[:3, 3]
            cam = ray @ T[:3, :3]
            z = np.maximum(cam[:, 2], 1e-6)
            u, v = K[0, 0] * cam[:, 0] / z + K[0, 2], K[1, 1] * cam[:, 1] / z + K[1, 2]
            dist = np.linalg.norm(ray, axis=1)
            cos = np.abs((nrm * ray).sum(1)) / dist
            inside = (cam[:, 2] > 0.05) & (u >= 10) & (u < 310) & (v >= 10) & (v < 230)
            cand = np.flatnonzero(inside & (cos >= 0.2))
            rays = np.concatenate([np.broadcast_to(T[:3, 3], (len(cand), 3)), ray[cand] / dist[cand, None]],
                                  1)
            t = rc.cast_rays(o3d.core.Tensor(rays.astype(np.float32)))["t_hit"].numpy()
            seen[cand[t > dist[cand] - 0.02]] = True
        return float(seen.mean())

    walk = generate_scene(SEED, 1, frames=30)
    loop = generate_scene(SEED, 1, frames=30, camera_path="loop")
    np.testing.assert_array_equal(walk.coord, loop.coord)  # the path does not change the room
    cw, cl = coverage(walk), coverage(loop)
    assert cw > 0.55 and cw > cl + 0.1, (cw, cl)
    heights = [P[2, 3] for P in walk.camera_room_poses]
    assert 1.1 < min(heights) and max(heights) < 1.8 and np.ptp(heights) > 0.3
    with pytest.raises(ValueError, match="unknown camera path"):
        generate_scene(SEED, 1, frames=2, camera_path="orbit")


def test_synth_cli_camera_path(tmp_path, capsys):
    """``--camera-path`` picks the generator's camera path (``walk`` default, ``loop``): the poses written
    are those of ``generate_scene`` with that path; an unknown path is a usage error."""
    from pointprobe.cli import main
    from pointprobe.data.frames import read_matrix

    out = tmp_path / "loop"
    args = ["--scenes", "1", "--seed", "5", "--frames-per-scene", "2", "--image-size", "32x24",
            "--no-progress"]
    assert main(["synth", "--out", str(out), "--camera-path", "loop", *args]) == 0
    scene = generate_scene(5, 0, frames=2, camera_path="loop")
    for i, P in enumerate(scene.camera_room_poses):
        pose = read_matrix(out / "scans" / scene.name / "pose" / f"{i}.txt")
        np.testing.assert_allclose(pose, scene.room_to_world @ P, atol=1e-5)
    walk = generate_scene(5, 0, frames=2)
    assert not np.allclose(walk.camera_room_poses[0], scene.camera_room_poses[0])
    with pytest.raises(SystemExit) as e:
        main(["synth", "--out", str(tmp_path / "x"), "--camera-path", "orbit", *args])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err
    from pointprobe.synth import CAMERA_PATHS

    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    assert "{" + ",".join(CAMERA_PATHS) + "}" in capsys.readouterr().out  # the CLI offers every path


def test_the_generator_is_its_own_room():
    """``pointprobe.synth`` writes for the readers of ``pointprobe.data``; the readers never import the
    generator, and the generator imports no pipeline stage (only common, pointprobe.data and itself)."""
    import ast
    from pathlib import Path

    import pointprobe

    root = Path(pointprobe.__file__).parent

    def imports(folder: str) -> set[str]:
        out = set()
        for f in (root / folder).glob("*.py"):
            for n in ast.walk(ast.parse(f.read_text())):
                if isinstance(n, ast.ImportFrom) and n.module:
                    out.add(n.module)
                elif isinstance(n, ast.Import):
                    out.update(a.name for a in n.names)
        return out

    assert not {m for m in imports("data") if m.startswith("pointprobe.synth")}
    inner = {m for m in imports("synth") if m.startswith("pointprobe")}
    assert inner and all(m.startswith(("pointprobe.data", "pointprobe.synth")) for m in inner), inner
