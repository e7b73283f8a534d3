"""The synthetic appearance-vs-motion dataset: layout, determinism, and what its classes mean."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from common.errors import ConfigError
from videoprobe.cli import main as videoprobe_main
from videoprobe.data import build_video_dataset, open_video
from videoprobe.data.synth import (
    CATALOGUE,
    DEFAULT_CLASSES,
    SynthConfig,
    generate_dataset,
    motion_path,
    render_object,
    sample_look,
    video_plan,
)

CLASSES = ["RedDisc", "MoveLeft", "MoveRight"]


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "a"
    cfg = SynthConfig(CLASSES, videos_per_class=4, seed=7, frames=12, size=32)
    generate_dataset(out, cfg, progress=False)
    return out


def test_layout_and_splits(tiny: Path) -> None:
    assert (tiny / "splits/classInd.txt").read_text() == "1 MoveLeft\n2 MoveRight\n3 RedDisc\n"
    meta = json.loads((tiny / "classes.json").read_text())
    assert [(c["name"], c["index"], c["kind"]) for c in meta["classes"]] == [
        ("MoveLeft", 0, "motion"), ("MoveRight", 1, "motion"), ("RedDisc", 2, "appearance")]
    assert meta["appearance"] == ["RedDisc"] and meta["motion"] == ["MoveLeft", "MoveRight"]
    train, names = build_video_dataset("ucf101", tiny, "train")
    test, _ = build_video_dataset("synth", tiny, "test")
    assert names == ["MoveLeft", "MoveRight", "RedDisc"]
    assert len(train) + len(test) == 12 and meta["num_videos"] == {"train": len(train), "test": len(test)}
    for cls in range(3):  # every class in both splits, groups never shared between splits
        tr = {Path(it.path).stem.split("_")[2] for it in train if it.label == cls}
        te = {Path(it.path).stem.split("_")[2] for it in test if it.label == cls}
        assert tr and te and not tr & te
    for it in train + test:
        assert Path(it.path).stem.startswith(f"v_{names[it.label]}_g")
        with open_video(it.path, "decord") as r:
            assert (r.num_frames, r.height, r.width) == (12, 32, 32)


def test_deterministic_by_seed(tiny: Path, tmp_path: Path) -> None:
    cfg = SynthConfig(CLASSES, videos_per_class=4, seed=7, frames=12, size=32)
    generate_dataset(tmp_path / "b", cfg, progress=False)
    assert digest(tmp_path / "b") == digest(tiny)
    cfg.seed = 8
    generate_dataset(tmp_path / "c", cfg, progress=False)
    a, c = digest(tiny), digest(tmp_path / "c")
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if k.endswith(".mp4"))


def test_plan_group_split() -> None:
    plan = video_plan(SynthConfig(["RedDisc", "MoveLeft"], videos_per_class=20))
    red = [p for p in plan if p["class"] == "RedDisc"]
    assert len(red) == 20 and {p["group"] for p in red} == {1, 2, 3, 4, 5}
    assert {p["group"] for p in red if p["split"] == "test"} == {1, 2}  # round(5 * 0.3) groups, like UCF


def test_time_reversal_pairs_share_frame_sets() -> None:
    """Members of a motion pair have the same frame sets: the path of one (for a seed) is the
    reversed path of the other (for the same seed)."""
    for a, b in [("MoveLeft", "MoveRight"), ("Falling", "Rising"), ("MoveUp", "MoveDown"),
                 ("RotateClockwise", "RotateCounterclockwise")]:
        for seed in range(5):
            pa = motion_path(CATALOGUE[a], 16, 64, 11.0, np.random.default_rng(seed))
            pb = motion_path(CATALOGUE[b], 16, 64, 11.0, np.random.default_rng(seed))
            if a.startswith("Rotate"):  # same start angle, opposite sense: the set is mirrored about it
                assert np.allclose(pa[2] - pa[2][0], -(pb[2] - pb[2][0]))
                continue
            for ua, ub in zip(pa, pb):
                assert np.allclose(ua, ub[::-1])


def test_motion_semantics() -> None:
    rng = np.random.default_rng(0)
    cx, cy, _ = motion_path(CATALOGUE["MoveLeft"], 16, 64, 11.0, rng)
    assert (np.diff(cx) < 0).all() and np.ptp(cy) < 1e-9
    cx, cy, _ = motion_path(CATALOGUE["Falling"], 16, 64, 11.0, rng)
    assert (np.diff(cy) > 0).all() and (np.diff(cy, 2) > 0).all()  # down (y grows) and accelerating
    cx, cy, _ = motion_path(CATALOGUE["Rising"], 16, 64, 11.0, rng)
    assert (np.diff(cy) < 0).all() and (np.diff(np.abs(np.diff(cy))) < 0).all()  # up and slowing down
    for name, size in [("SlowSweep", 64), ("FastSweep", 64), ("MoveLeft", 64)]:
        for seed in range(20):
            cx, cy, _ = motion_path(CATALOGUE[name], 32, size, 13.0, np.random.default_rng(seed))
            assert cx.min() >= 13 and cx.max() <= size - 13 and cy.min() >= 13 and cy.max() <= size - 13
    slow = motion_path(CATALOGUE["SlowSweep"], 31, 64, 11.0, np.random.default_rng(1))
    fast = motion_path(CATALOGUE["FastSweep"], 31, 64, 11.0, np.random.default_rng(1))
    step = lambda p: np.hypot(np.diff(p[0]), np.diff(p[1])).sum()  # noqa: E731
    assert step(fast) == pytest.approx(3 * step(slow))


def orientation(alpha: np.ndarray) -> float:
    """Principal-axis angle of a mask in image coordinates (x right, y down), from second moments."""
    yy, xx = np.mgrid[0:alpha.shape[0], 0:alpha.shape[1]]
    w = alpha / alpha.sum()
    mx, my = (w * xx).sum(), (w * yy).sum()
    cxx, cyy, cxy = (w * (xx - mx) ** 2).sum(), (w * (yy - my) ** 2).sum(), (w * (xx - mx) * (yy - my)).sum()
    return 0.5 * math.atan2(2 * cxy, cxx - cyy)


def test_positive_rotation_is_clockwise_on_screen() -> None:
    look = sample_look(None, 64, np.random.default_rng(0))
    look.angles, look.radii = np.array([0.0, 0.2, math.pi, math.pi + 0.2]), np.array([1.0, 0.2, 1.0, 0.2])
    look.color, look.color2, look.texture = np.full(3, 255.0), np.full(3, 255.0), "solid"
    angles = []
    for theta in (0.0, 0.4):
        frame = np.zeros((1, 64, 64, 3), np.float32)
        render_object(frame, look, np.array([32.0]), np.array([32.0]), np.array([theta]))
        angles.append(orientation(frame[0, ..., 0] / 255.0))
    # an angle that grows in (x right, y down) coordinates turns clockwise as seen on screen
    assert angles[1] - angles[0] == pytest.approx(0.4, abs=0.08)


def test_config_errors_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="unknown class"):
        SynthConfig(["RedDisc", "Nope"]).validate()
    with pytest.raises(ConfigError, match="videos_per_class"):
        SynthConfig(videos_per_class=1).validate()
    assert set(DEFAULT_CLASSES) <= set(CATALOGUE)
    assert videoprobe_main(["synth", "--out", str(tmp_path / "x"), "--classes", "Nope"]) == 2
    assert "unknown class" in capsys.readouterr().err
    rc = videoprobe_main(["synth", "--out", str(tmp_path / "cli"), "--classes", "YellowRing", "Falling",
                          "--videos-per-class", "2", "--frames", "8", "--size", "16", "--seed", "1"])
    assert rc == 0
    assert (tmp_path / "cli/splits/classInd.txt").read_text() == "1 Falling\n2 YellowRing\n"
    assert len(list((tmp_path / "cli/videos").rglob("*.mp4"))) == 4
