"""featviz: point panels (open3d render once per module, fallbacks), video PCA grids, the HTML report."""

from __future__ import annotations

import hashlib
import json
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch

from common import render
from common.errors import ConfigError, InputError
from common.featviz.cli import main
from common.pca import pca_colors, similarity
from pointprobe.data.points import load_points
from pointprobe.data.scannet import SCANNET20_PALETTE
from pointprobe.viz import visualize_points, zscored_input_features

# ---------------------------------------------------------------------------------------- fixtures


def _make_scene(folder: Path, seed: int = 0) -> Path:
    """A tiny room in the preprocessed layout: floor, two walls, a table top and a chair block."""
    rng = np.random.default_rng(seed)
    parts = [  # (lo, hi, normal, segment20 label, colour)
        ([0, 0, 0], [3, 2, 0], [0, 0, 1], 1, [150, 140, 120]),
        ([0, 0, 0], [3, 0, 2], [0, 1, 0], 0, [220, 220, 210]),
        ([0, 0, 0], [0, 2, 2], [1, 0, 0], 0, [210, 215, 220]),
        ([1.2, 0.8, 0.7], [1.9, 1.3, 0.72], [0, 0, 1], 6, [120, 70, 40]),
        ([2.3, 1.3, 0], [2.6, 1.6, 0.8], [0, 0, 1], 4, [40, 80, 160]),
    ]
    sizes = [900, 450, 300, 250, 200]
    coord = np.concatenate([rng.uniform(lo, hi, (n, 3)) for (lo, hi, *_), n in zip(parts, sizes)])
    normal = np.concatenate([np.tile(p[2], (n, 1)) for p, n in zip(parts, sizes)])
    seg = np.concatenate([np.full(n, p[3]) for p, n in zip(parts, sizes)])
    color = np.concatenate(
        [np.clip(np.array(p[4]) + rng.normal(0, 6, (n, 3)), 0, 255) for p, n in zip(parts, sizes)]
    )
    folder.mkdir(parents=True)
    arrays = {
        "coord": coord.astype(np.float32),
        "color": color.astype(np.uint8),
        "normal": normal.astype(np.float32),
        "segment20": seg.astype(np.int32),
        "segment200": seg.astype(np.int32),
        "instance": seg.astype(np.int32),
    }
    for k, v in arrays.items():
        np.save(folder / f"{k}.npy", v)
    return folder


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return _make_scene(tmp_path_factory.mktemp("scenes") / "scene0000_00")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from pointprobe.models import create_encoder, save_encoder

    torch.manual_seed(0)
    return save_encoder(create_encoder("ptv3_tiny"), tmp_path_factory.mktemp("ckpt") / "tiny.pth")


@pytest.fixture(scope="module")
def points_run(scene, checkpoint, tmp_path_factory) -> Path:
    """One full ``featviz points`` run with the open3d renderer (the only 3D render of the module)."""
    out = tmp_path_factory.mktemp("points")
    rc = main(
        [
            "points",
            str(scene),
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(out),
            "--kmeans",
            "3",
            "--query-index",
            "1940",
            "--size",
            "200x150",
        ]
    )
    assert rc == 0
    return out


@pytest.fixture
def no_render(monkeypatch):
    monkeypatch.setenv("PROBESUITE_NO_RENDER", "1")
    monkeypatch.setattr(render, "_failure", None)


def _image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _assert_picture(img: np.ndarray, min_colors: int = 100) -> None:
    assert img.std() > 10, "picture is (nearly) blank"
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > min_colors


def _o3d_colors(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import open3d as o3d

    pcd = o3d.io.read_point_cloud(str(path))
    return np.asarray(pcd.points), np.asarray(pcd.colors)


# ------------------------------------------------------------------------------------------ points


@pytest.mark.slow
def test_points_cli_outputs(points_run, scene, checkpoint):
    for name in ("input", "pca", "similarity", "kmeans", "labels"):
        assert (points_run / f"{name}.ply").is_file(), name
    rec = json.loads((points_run / "featviz.json").read_text())
    assert rec["render_backend"] == "open3d", rec["render_message"]
    assert rec["encoder"]["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert rec["query_index"] == 1940 and rec["scene"]["n_points"] == 2100
    assert rec["panels"] == ["input", "pca", "similarity", "kmeans", "labels"]
    assert rec["args"]["kmeans"] == 3 and len(rec["views"]) == 3
    img = _image(points_run / "panels.png")
    _assert_picture(img, 500)
    assert img.shape[0] > 3 * 150 and img.shape[1] > 5 * 200  # 3 views x 5 panels


@pytest.mark.slow
def test_points_ply_colours_read_back(points_run, scene, checkpoint):
    from pointprobe.data.ply import read_ply
    from pointprobe.models import encode_points, load_encoder

    pts = load_points(scene)
    xyz, rgb = _o3d_colors(points_run / "pca.ply")
    np.testing.assert_allclose(xyz, pts.coord, atol=1e-5)
    feats = encode_points(load_encoder(checkpoint), pts.coord, pts.color, pts.normal)
    np.testing.assert_allclose(rgb, pca_colors(feats), atol=1 / 255 + 1e-6)
    _, in_rgb = _o3d_colors(points_run / "input.ply")
    np.testing.assert_allclose(in_rgb * 255, pts.color, atol=0.5)
    _, lab_rgb = _o3d_colors(points_run / "labels.ply")
    np.testing.assert_allclose(lab_rgb * 255, SCANNET20_PALETTE[pts.labels], atol=0.5)
    sim = read_ply(points_run / "similarity.ply").vertex["similarity"]
    assert int(np.argmax(sim)) == 1940
    np.testing.assert_allclose(sim, similarity(feats, 1940), atol=1e-4)


def test_no_renderer_still_writes_plys_and_says_so(scene, tmp_path, no_render, capsys):
    pts = load_points(scene)
    res = visualize_points(
        pts.coord,
        pts.color,
        zscored_input_features(pts),
        tmp_path,
        labels=pts.labels,
        query=[1.5, 1.0, 0.7],
        size=(160, 120),
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "PROBESUITE_NO_RENDER" in err[0] and "matplotlib" in err[0]
    assert res.backend == "matplotlib" and res.views == ["top (matplotlib)"]
    assert res.query_index == int(np.argmin(((pts.coord - [1.5, 1.0, 0.7]) ** 2).sum(1)))
    assert sorted(p.name for p in tmp_path.glob("*.ply")) == [
        "input.ply",
        "labels.ply",
        "pca.ply",
        "similarity.ply",
    ]
    _, rgb = _o3d_colors(tmp_path / "pca.ply")
    np.testing.assert_allclose(rgb, pca_colors(zscored_input_features(pts)), atol=1 / 255 + 1e-6)
    _assert_picture(_image(res.png))


def test_crashing_renderer_falls_back(scene, tmp_path, monkeypatch, capsys):
    """A renderer that aborts the child process (what Filament does without Vulkan) is caught."""
    monkeypatch.delenv("PROBESUITE_NO_RENDER", raising=False)
    monkeypatch.setattr(render, "_failure", None)
    monkeypatch.setattr(
        render, "_worker_command", lambda i, o: [sys.executable, "-c", "import os; os.abort()"]
    )
    coord = np.random.default_rng(0).uniform(0, 1, (300, 3))
    with pytest.raises(render.RendererUnavailable, match="signal"):
        render.render_point_clouds(coord, [coord], size=(64, 48))
    res = render.render_or_fallback(coord, [coord], size=(64, 48))  # the failure is remembered: no retry
    assert res.backend == "matplotlib" and res.images.shape == (1, 1, 48, 64, 3)
    assert "failed" in capsys.readouterr().err


def test_points_cli_raw_random_init_and_cache(scene, tmp_path, no_render, capsys):
    from common.cache import CacheKey, CacheWriter

    assert main(["points", str(scene), "--encoder", "raw", "--out", str(tmp_path / "raw")]) == 0
    rec = json.loads((tmp_path / "raw" / "featviz.json").read_text())
    assert rec["encoder"]["checkpoint_sha256"] == "none" and rec["feature_dim"] == 9
    assert rec["render_backend"] == "matplotlib"

    assert (
        main(
            [
                "points",
                str(scene),
                "--encoder",
                "ptv3_tiny",
                "--random-init",
                "--seed",
                "3",
                "--out",
                str(tmp_path / "rnd"),
            ]
        )
        == 0
    )
    rec = json.loads((tmp_path / "rnd" / "featviz.json").read_text())
    assert rec["encoder"]["checkpoint_sha256"] == "random:3"

    # a cache holding features of every other point, mapped back through an index array
    pts = load_points(scene)
    keep = np.arange(0, len(pts), 2)
    feats = zscored_input_features(pts)[keep]
    key = CacheKey("raw", "none", "0" * 16, {"grid": 0.02}, "synthetic", "val")
    with CacheWriter(tmp_path / "cache", key, feats.shape[1]) as w:
        w.write("scene0000_00", feats, pts.labels[keep], index=keep)
    assert (
        main(
            [
                "points",
                str(scene),
                "--cache",
                str(tmp_path / "cache"),
                "--item",
                "scene0000_00",
                "--out",
                str(tmp_path / "cached"),
            ]
        )
        == 0
    )
    rec = json.loads((tmp_path / "cached" / "featviz.json").read_text())
    assert rec["encoder"]["encoder"] == "raw" and rec["encoder"]["item"] == "scene0000_00"
    _, rgb = _o3d_colors(tmp_path / "cached" / "pca.ply")
    nearest = ((pts.coord[:, None, :] - pts.coord[keep][None]) ** 2).sum(-1).argmin(1)  # brute force
    np.testing.assert_allclose(rgb, pca_colors(feats[nearest]), atol=1 / 255 + 1e-6)

    capsys.readouterr()
    assert main(["points", str(scene), "--out", str(tmp_path / "x")]) == 2  # no feature source
    assert main(["points", str(tmp_path / "missing"), "--encoder", "raw", "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("error: ") for e in err) and "missing" in err[1]


def test_scene_formats(scene, tmp_path):
    from pointprobe.data.ply import write_ply

    pts = load_points(scene)
    assert len(pts) == 2100 and pts.labels is not None and pts.color.dtype == np.uint8
    np.save(tmp_path / "a.npy", np.concatenate([pts.coord, pts.color, pts.normal], axis=1))
    b = load_points(tmp_path / "a.npy")
    assert np.array_equal(b.color, pts.color) and b.labels is None
    np.savez(tmp_path / "c.npz", coord=pts.coord, color=pts.color / 255.0, segment=pts.labels)
    c = load_points(tmp_path / "c.npz")
    assert np.abs(c.color.astype(int) - pts.color).max() <= 1 and np.array_equal(c.labels, pts.labels)
    write_ply(
        tmp_path / "d.ply",
        {
            "x": pts.coord[:, 0].astype(np.float32),
            "y": pts.coord[:, 1].astype(np.float32),
            "z": pts.coord[:, 2].astype(np.float32),
            "red": pts.color[:, 0].copy(),
            "green": pts.color[:, 1].copy(),
            "blue": pts.color[:, 2].copy(),
            "label": pts.labels.astype(np.int32),
        },
    )
    d = load_points(tmp_path / "d.ply")
    assert np.array_equal(d.labels, pts.labels) and d.normal is None
    # a raw ScanNet scene folder (mesh only, no annotations)
    raw = tmp_path / "scans" / "scene0001_00"
    faces = np.array([[0, 1, 2], [0, 2, 3]], dtype=np.int32)
    quad = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=np.float32)
    write_ply(
        raw / "scene0001_00_vh_clean_2.ply",
        {
            "x": quad[:, 0],
            "y": quad[:, 1],
            "z": quad[:, 2],
            "red": np.full(4, 200, np.uint8),
            "green": np.full(4, 10, np.uint8),
            "blue": np.full(4, 10, np.uint8),
        },
        faces,
    )
    r = load_points(raw)
    assert len(r) == 4 and r.labels is None and np.allclose(np.abs(r.normal[:, 2]), 1)
    with pytest.raises(InputError, match="coord"):
        np.savez(tmp_path / "e.npz", xyz=pts.coord)
        load_points(tmp_path / "e.npz")
    with pytest.raises(InputError, match="unsupported"):
        (tmp_path / "f.txt").write_text("1 2 3")
        load_points(tmp_path / "f.txt")


def test_visualize_points_rejects_bad_input(scene, tmp_path, no_render):
    pts = load_points(scene)
    feats = zscored_input_features(pts)
    bad = feats.copy()
    bad[3, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        visualize_points(pts.coord, pts.color, bad, tmp_path)
    with pytest.raises(InputError, match="expected"):
        visualize_points(pts.coord, pts.color, feats[:10], tmp_path)
    with pytest.raises(ConfigError, match="outside"):
        visualize_points(pts.coord, pts.color, feats, tmp_path, query=5000)


# ------------------------------------------------------------------------------------------- video


@pytest.fixture(scope="module")
def video_file(tmp_path_factory) -> Path:
    from videoprobe.data.synth import write_video

    frames = np.zeros((12, 72, 96, 3), np.uint8)
    frames[..., 2] = 70
    for i in range(12):
        frames[i, 10:40, 5 + 4 * i : 35 + 4 * i] = (230, 40, 40)
        frames[i, 45:70, 70 - 3 * i : 90 - 3 * i] = (40, 200, 60)
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_video(path, frames, fps=12)
    return path


def test_video_cli_grid_and_mp4(video_file, tmp_path):
    from videoprobe.data.decode import open_video

    out = tmp_path / "v"
    assert (
        main(
            [
                "video",
                str(video_file),
                "--encoder",
                "videomae_vit_tiny",
                "--frames",
                "4",
                "--frame-step",
                "2",
                "--size",
                "64",
                "--query",
                "1,2,1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rec = json.loads((out / "featviz.json").read_text())
    assert rec["token_grid"] == [2, 4, 4] and rec["encoder"]["checkpoint_sha256"] == "random:0"
    img = _image(out / "frames.png")
    h, w, _, _ = render.grid_layout(
        3, 4, (64, 64), col_titles=True, row_titles=["input", "PCA", "similarity"], title=True
    )
    assert img.shape[1] == w and img.shape[0] > h  # the grid, plus the similarity colour bar below it
    _assert_picture(img, 50)
    with open_video(out / "frames.mp4") as r:
        assert r.num_frames == 4 and (r.width, r.height) == (3 * 64, 64)


def test_video_pca_is_joint_over_frames(tmp_path):
    from videoprobe.models.base import EncoderOutput
    from videoprobe.viz import token_pca_colors, visualize_video

    rng = np.random.default_rng(0)
    tok = torch.from_numpy(rng.normal(size=(3, 2, 2, 8)).astype(np.float32))
    tok[2] = tok[0]  # the same features at two times get the same colours
    cols = token_pca_colors(tok)
    assert cols.shape == (3, 2, 2, 3) and np.array_equal(cols[0], cols[2])
    np.testing.assert_allclose(cols.reshape(-1, 3), pca_colors(tok.reshape(-1, 8)), atol=1e-6)

    class Pooled(torch.nn.Module):
        name = "pooled_only"

        def forward(self, clip):
            return EncoderOutput(tokens=None, pooled=clip.mean(dim=(2, 3, 4)))

    with pytest.raises(ConfigError, match="no spatial tokens"):
        visualize_video(torch.rand(1, 3, 4, 32, 32), Pooled(), tmp_path)


def test_frame_folder_natural_order(tmp_path):
    from PIL import Image

    from videoprobe.viz import load_frames

    for i in (1, 2, 10):
        Image.fromarray(np.full((8, 8, 3), i * 20, np.uint8)).save(tmp_path / f"frame_{i}.png")
    f = load_frames(tmp_path, clip_len=3, frame_step=1)
    assert f.frames.shape == (3, 8, 8, 3) and f.frames[:, 0, 0, 0].tolist() == [20, 40, 200]


# ------------------------------------------------------------------------------------------ report


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [v for k, v in attrs if k in ("src", "href") and v]


def _links(page: Path) -> list[str]:
    p = _Links()
    p.feed(page.read_text())
    return p.links


def test_report_page_links_exist(tmp_path):
    from common.report import write_table

    run = tmp_path / "results" / "run 1"
    run.mkdir(parents=True)
    render.save_png(np.random.default_rng(0).integers(0, 255, (20, 30, 3)), run / "panels.png")
    write_table(
        [{"encoder": "ptv3", "mIoU": 0.4123}, {"encoder": "raw", "mIoU": 0.1}],
        run / "probe",
        "Probe <val>",
        meta={"split": "val"},
    )
    (run / "config.yaml").write_text("probe:\n  lr: 0.002\n")
    (tmp_path / "results" / "notes.md").write_text("# Notes\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n- one\n")
    (tmp_path / "results" / "record.json").write_text(json.dumps({"encoder": "x"}))
    for page in (tmp_path / "results" / "index.html", tmp_path / "elsewhere" / "page.html"):
        rc = main(
            ["report", str(tmp_path / "results")] + (["--out", str(page)] if "elsewhere" in str(page) else [])
        )
        assert rc == 0 and page.is_file()
        text = page.read_text()
        links = _links(page)
        files = [u for u in links if not u.startswith("#")]
        assert all("://" not in u for u in links)  # offline: relative links only
        for u in files:
            assert (page.parent / unquote(u)).is_file(), u
        assert sum(u.endswith("panels.png") for u in files) == 2  # <a href> + <img src>
        assert any(u.endswith("config.yaml") for u in files) and any(u.endswith("probe.json") for u in files)
        assert "<td>ptv3</td>" in text and "0.4123" in text and "Probe &lt;val&gt;" in text
        assert "probe.md" not in text  # the markdown twin of a JSON table is not shown twice
        assert "<td>1</td>" in text and "lr: 0.002" in text
    assert "index.html" not in text


def test_report_missing_folder(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "results folder not found" in capsys.readouterr().err


def test_similarity_panel_has_colour_bar_and_names_query_by_coordinates(scene, tmp_path, no_render):
    import matplotlib

    pts = load_points(scene)
    res = visualize_points(pts.coord, pts.color, zscored_input_features(pts), tmp_path, query=[1.5, 1.0, 0.7],
                           size=(160, 120))
    q = pts.coord[res.query_index]
    assert res.query_xyz == pytest.approx(tuple(float(v) for v in q))
    bar = res.colorbar
    assert bar is not None and bar.cmap == "coolwarm" and f"({q[0]:.2f}, {q[1]:.2f}, {q[2]:.2f})" in bar.label
    pos = [p for p, _ in bar.ticks]
    assert len(pos) >= 3 and pos == sorted(pos)
    sim = similarity(zscored_input_features(pts), res.query_index)
    assert bar.ticks[0][1] == f"{sim.min():.2f}" and bar.ticks[-1][1] == f"{sim.max():.2f}"
    # the PNG holds the gradient: a row runs through the colormap over >= 100 pixels (start to end colour)
    img = _image(res.png).astype(int)
    cmap = matplotlib.colormaps["coolwarm"]
    c0, c1 = ((np.array(cmap(v)[:3]) * 255).astype(int) for v in (0.0, 1.0))
    found = False
    for row in img[img.shape[0] // 2:]:
        starts = np.nonzero(np.abs(row - c0).max(1) <= 6)[0]
        ends = np.nonzero(np.abs(row - c1).max(1) <= 6)[0]
        for x0 in starts:
            for x1 in ends[ends >= x0 + 100]:
                ramp = (cmap(np.linspace(0, 1, x1 - x0 + 1))[:, :3] * 255).astype(int)
                if np.abs(row[x0:x1 + 1] - ramp).max() <= 12:
                    found = True
                    break
            if found:
                break
        if found:
            break
    assert found, "no colour bar in the picture"


def test_grid_title_wraps_instead_of_running_off_the_picture():
    from common.render import _font, _text_width, _wrap_text, compose_grid

    cells = [[np.full((40, 60, 3), 128, np.uint8)] * 3]
    title = "v_ApplyEyeMakeup_g01_c01.avi: videomae_vit_tiny (random:0), PCA of patch tokens over 16 frames"
    short = compose_grid(cells, title="short")
    long = compose_grid(cells, title=title)
    assert long.shape[1] == short.shape[1]  # the grid keeps its width...
    lines = _wrap_text(title, _font(16), long.shape[1] - 2 * 6)
    assert len(lines) > 2 and all(_text_width(ln, _font(16)) <= long.shape[1] for ln in lines)
    assert long.shape[0] > short.shape[0] + 2 * 16  # ...and grows in height for the wrapped lines
    # the text reaches the last title line: dark pixels in the band above the first cell row
    band = long[: long.shape[0] - short.shape[0] + 20]
    assert (band.min(2) < 100).any(1).sum() > 3 * 10
