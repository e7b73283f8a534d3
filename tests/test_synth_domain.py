"""The generator's second domain (``lidar``): no colour, range noise and density falling off with distance,
other room types; deterministic, and the default ``rgbd`` domain unchanged."""
from __future__ import annotations

import numpy as np
import pytest

from pointprobe.synth import DOMAINS, generate_dataset, generate_scene
from pointprobe.synth.rooms import LIDAR_ROOM_TYPES, ROOM_TYPES


def _floor_stats(scene) -> tuple[float, float]:
    """(std of the floor's heights in m, coefficient of variation of floor vertices per 0.5 m cell)."""
    floor = scene.coord[scene.nyu40 == 2].astype(np.float64)
    cells = np.floor(floor[:, :2] / 0.5).astype(np.int64)
    _, counts = np.unique(cells, axis=0, return_counts=True)
    counts = counts[counts > 0]
    return float(floor[:, 2].std()), float(counts.std() / counts.mean())


def test_lidar_domain_is_deterministic_and_differs_from_rgbd():
    a = generate_scene(4, 1, frames=0, domain="lidar")
    b = generate_scene(4, 1, frames=0, domain="lidar")
    for k in ("coord", "color", "faces", "seg_indices", "nyu40", "room_to_world"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert a.groups == b.groups
    rgbd_z, rgbd_cv, lidar_z, lidar_cv = [], [], [], []
    for i in range(3):
        r = generate_scene(4, i, frames=0)
        li = generate_scene(4, i, frames=0, domain="lidar")
        assert r.room_type in ROOM_TYPES and li.room_type in LIDAR_ROOM_TYPES
        # colour absent in the scan, present in the RGB-D rooms
        assert li.color.max() == 0 and r.color.astype(float).std() > 10
        # faces index kept vertices only, every vertex is on a face
        assert li.faces.max() == len(li.coord) - 1 and len(np.unique(li.faces)) == len(li.coord)
        for stats, (z, cv) in ((r, (rgbd_z, rgbd_cv)), (li, (lidar_z, lidar_cv))):
            fz, fcv = _floor_stats(stats)
            z.append(fz)
            cv.append(fcv)
    # range noise grows with distance: the floor is rougher; density falls off: floor cells are uneven
    assert np.mean(lidar_z) > 2 * np.mean(rgbd_z)
    assert np.mean(lidar_cv) > 1.5 * np.mean(rgbd_cv)
    assert "conference room" in {generate_scene(4, i, frames=0, domain="lidar").room_type for i in range(3)}


def test_lidar_sensor_model_falls_off_as_documented():
    """A dense 12 m strip of floor seen from a sensor at its start: kept fraction ~ (1.8 / d)^2 and the
    range noise std ~ 2 mm + 1.5 mm d^2, as the module docstring states."""
    from pointprobe.synth.scenes import _lidar_scan

    class _Room:
        W, D = 0.0, 0.0  # sensor at x, y = 0

    n = 1200
    xs, ys = np.meshgrid(np.linspace(0, 12, n), np.linspace(-0.25, 0.25, 40), indexing="ij")
    v = np.stack([xs.ravel(), ys.ravel(), np.zeros(xs.size)], 1)
    ij = np.arange(xs.size).reshape(xs.shape)
    quads = np.stack([ij[:-1, :-1], ij[1:, :-1], ij[1:, 1:], ij[:-1, 1:]], -1).reshape(-1, 4)
    t = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
    idx, faces, moved = _lidar_scan(_Room(), v, t, np.random.default_rng(0))
    assert faces.max() < len(idx)
    h = 1.6  # the sensor height range is 1.4-1.8 m: compare with the middle and a tolerance
    for x0, x1 in ((1.0, 1.5), (4.0, 5.0), (8.0, 10.0)):
        band = (v[:, 0] >= x0) & (v[:, 0] < x1)
        kept = np.isin(np.flatnonzero(band), idx).mean()
        d = np.hypot(v[band, 0], h)
        expect = np.clip((1.8 / d) ** 2, 0.05, 1.0).mean()
        assert abs(kept - expect) < 0.25 * expect + 0.02, (x0, kept, expect)
    near = v[idx, 0] < 2.0
    far = v[idx, 0] > 8.0
    err = np.linalg.norm(moved - v[idx], axis=1)
    assert err[far].std() > 5 * err[near].std()


def test_domain_reaches_the_dataset_and_the_cli(tmp_path, capsys):
    from pointprobe.cli import main
    from pointprobe.data.ply import read_ply

    out = tmp_path / "lidar"
    args = ["--scenes", "1", "--seed", "2", "--frames-per-scene", "0", "--no-progress"]
    assert main(["synth", "--out", str(out), "--domain", "lidar", *args]) == 0
    assert (out / "synth_domain.txt").read_text().strip() == "lidar"
    scene = generate_scene(2, 0, frames=0, domain="lidar")
    vert = read_ply(out / "scans" / scene.name / f"{scene.name}_vh_clean_2.ply").vertex
    assert len(vert["x"]) == len(scene.coord) and int(np.max(vert["red"])) == 0
    np.testing.assert_allclose(vert["x"], scene.coord[:, 0])
    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    assert "{" + ",".join(DOMAINS) + "}" in capsys.readouterr().out  # the CLI offers every domain
    with pytest.raises(ValueError, match="unknown synth domain"):
        generate_dataset(tmp_path / "x", 1, domain="sonar", progress=False)
    with pytest.raises(ValueError, match="unknown synth domain"):
        generate_scene(0, 0, domain="sonar")


def test_domain_is_a_config_key_of_synth(tmp_path, capsys):
    """``pointprobe synth domain=lidar`` (and ``domain: lidar`` in a --config file) writes the same scenes
    as ``--domain lidar``; an unknown domain, or a flag and a key=value that disagree, are one-line
    ConfigErrors (exit 2) that write nothing."""
    import typing

    from common.errors import ConfigError
    from pointprobe.cli import main
    from pointprobe.synth.cameras import CAMERA_PATHS
    from pointprobe.synth.config import SynthConfig, check_synth_config
    from pointprobe.synth.scenes import DEFAULT_DOMAIN

    hints = typing.get_type_hints(SynthConfig)
    assert typing.get_args(hints["domain"]) == DOMAINS and SynthConfig().domain == DEFAULT_DOMAIN
    assert typing.get_args(hints["camera_path"]) == CAMERA_PATHS
    common = ["--frames-per-scene", "0", "--no-progress"]
    flags = ["--scenes", "1", "--seed", "2", "--domain", "lidar"]
    assert main(["synth", "--out", str(tmp_path / "flag"), *flags, *common]) == 0
    assert main(["synth", f"out={tmp_path / 'key'}", "scenes=1", "seed=2", "domain=lidar", *common]) == 0
    (tmp_path / "synth.yaml").write_text("domain: lidar\nseed: 2\nscenes: 1\nframes_per_scene: 0\n")
    assert main(["synth", "--config", str(tmp_path / "synth.yaml"), "--out", str(tmp_path / "file"),
                 "--no-progress"]) == 0
    name = generate_scene(2, 0, frames=0, domain="lidar").name
    plys = [(tmp_path / d / "scans" / name / f"{name}_vh_clean_2.ply").read_bytes()
            for d in ("flag", "key", "file")]
    assert plys[0] == plys[1] == plys[2]
    for d in ("flag", "key", "file"):
        assert (tmp_path / d / "synth_domain.txt").read_text().strip() == "lidar"
    capsys.readouterr()

    bad = [(["domain=sonar"], "config key 'domain': expected one of ['rgbd', 'lidar'], got 'sonar'"),
           (["--domain", "rgbd", "domain=lidar"], "--domain rgbd and domain=lidar disagree"),
           (["domain=lidar", "scenes=0"], "--scenes must be >= 1 (config key 'scenes'), got 0"),
           (["domian=lidar"], "unknown config key 'domian' (did you mean 'domain'?)")]
    for extra, message in bad:
        scenes = [] if "scenes=0" in extra else ["--scenes", "1"]
        argv = ["synth", "--out", str(tmp_path / "bad"), *scenes, *extra, *common]
        assert main(argv) == 2, extra
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (extra, err)
        assert not (tmp_path / "bad").exists()
    with pytest.raises(ConfigError, match="config key 'domain'"):  # a SynthConfig built in code
        check_synth_config(SynthConfig(out=str(tmp_path), scenes=1, domain="sonar"))  # type: ignore[arg-type]
