"""tools/bench_explora.py: the paired bootstrap of probe differences, the data folder's resume check and
the section it writes (small generated data; the benchmark itself is not run here)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import bench_explora as be  # noqa: E402

from common.metrics import segmentation_metrics  # noqa: E402


def _confusions(scenes: int, classes: int, correct: float, seed: int) -> np.ndarray:
    """(scenes, C, C) confusion matrices: each scene's points right with probability ``correct``."""
    rng = np.random.default_rng(seed)
    out = np.zeros((scenes, classes, classes), np.int64)
    for s in range(scenes):
        for c in range(classes):
            n = int(rng.integers(50, 200))
            right = rng.binomial(n, correct)
            out[s, c, c] = right
            out[s, c] += np.bincount(rng.integers(0, classes, n - right), minlength=classes)
    return out


def _probe(conf: np.ndarray) -> dict:
    return {"confusion": conf, "scenes": [f"scene{i:04d}_00" for i in range(len(conf))]}


def test_paired_gain_is_the_difference_with_a_scene_bootstrap():
    base = _confusions(8, 5, 0.6, 0)
    same = be.paired_gain(_probe(base), _probe(base), n_boot=200)
    assert same == (0.0, 0.0, 0.0)
    better = _confusions(8, 5, 0.8, 1)
    g, lo, hi = be.paired_gain(_probe(better), _probe(base), n_boot=200)
    expect = 100 * (segmentation_metrics(better.sum(0))["mIoU"] - segmentation_metrics(base.sum(0))["mIoU"])
    assert g == pytest.approx(expect) and 0 < lo < g < hi
    # two test scenes that disagree (one favours each encoder): the interval holds 0 on both sides
    good, bad = _confusions(1, 5, 0.8, 2), _confusions(1, 5, 0.5, 3)
    g, lo, hi = be.paired_gain(_probe(np.concatenate([good, bad])), _probe(np.concatenate([bad, good])),
                               n_boot=200)
    assert lo < 0 < hi and lo < g < hi
    shifted = _probe(base)
    shifted["scenes"] = shifted["scenes"][::-1]
    with pytest.raises(SystemExit, match="different test scenes"):
        be.paired_gain(shifted, _probe(base))


def test_prepare_data_reuses_its_own_folder_and_refuses_another(tmp_path):
    t0 = time.time()
    data = be.prepare_data(tmp_path / "B", 5, 3, "lidar", t0, (0.4, 0.2, 0.4))
    assert (tmp_path / "B" / "raw" / "synth_domain.txt").read_text().strip() == "lidar"
    raw = tmp_path / "B" / "raw"
    splits = {s: (raw / f"scannetv2_{s}.txt").read_text().split() for s in ("train", "test")}
    assert len(splits["train"]) == 2 and len(splits["test"]) == 2
    assert sorted(p.name for p in (data / "test").iterdir()) == sorted(splits["test"])
    stamp = (tmp_path / "B" / "raw" / "scannetv2_test.txt").stat().st_mtime_ns
    assert be.prepare_data(tmp_path / "B", 5, 3, "lidar", t0, (0.4, 0.2, 0.4)) == data  # reused
    assert (tmp_path / "B" / "raw" / "scannetv2_test.txt").stat().st_mtime_ns == stamp
    for other in ((5, 3, "lidar", (0.6, 0.2, 0.2)), (6, 3, "lidar", (0.4, 0.2, 0.4)),
                  (5, 3, "rgbd", (0.4, 0.2, 0.4))):
        with pytest.raises(SystemExit, match="holds other data"):
            be.prepare_data(tmp_path / "B", other[0], other[1], other[2], t0, other[3])


def test_report_writes_the_intervals_into_the_section(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n<!-- begin bench_explora -->\nSTALE TEXT\n<!-- end bench_explora -->\n")
    rows = [{"name": "enc_A (pre-trained on A)", "trainable": 100, "minutes": 2.0, "B": 20.0,
             "B_gain": (0.0, 0.0, 0.0), "A": 30.0, "A_change": (0.0, 0.0, 0.0), "A_rec": 30.0, "ratio": 1.0,
             "r2": 1.0, "test_scenes": [8, 8]},
            {"name": "ExPLoRA on B", "trainable": 40, "minutes": 1.0, "B": 21.5, "B_gain": (1.5, -0.5, 3.25),
             "A": 29.0, "A_change": (-1.0, -2.0, 0.1), "A_rec": 29.5, "ratio": 0.98, "r2": 0.99,
             "test_scenes": [8, 8]}]
    info = {"scenes": 20, "seed_a": 1, "seed_b": 2, "steps_a": 10, "steps_b": 5, "alpha": 1.0, "set": [],
            "probe_config": "configs/point/probe.yaml", "probe_set": [], "train_points": 100,
            "variants": ["explora"], "split": [0.5, 0.1, 0.4], "wall_seconds": 60.0, "invocations": 1,
            "notes": [], "argv": ["--scenes", "20"]}
    be.report(tmp_path, rows, info, doc)
    text = doc.read_text()
    assert "STALE TEXT" not in text and "50/10/40 % train/val/test (8 test scenes in A, 8 in B)" in text
    assert "| ExPLoRA on B | 40 | 1.0 | 21.50 | +1.50 [-0.50, +3.25] | 29.00 | -1.00 [-2.00, +0.10] |" in text
    assert json.loads((tmp_path / "results.json").read_text())["rows"][1]["B gain [95% CI]"] == \
        "+1.50 [-0.50, +3.25]"
