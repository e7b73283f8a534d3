"""Training curves: CSV + PNG of the scalars of pretrain, distill and the linear probes (common.curves)."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from common.curves import read_csv, scalar_records, write_curves, write_probe_curves


def _assert_picture(path: Path) -> None:
    """A PNG that is not blank: several colours, and plotted (non-white) pixels."""
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    rgb = img[..., :3].reshape(-1, 3)
    assert len(np.unique(np.round(rgb * 255).astype(np.uint8), axis=0)) > 20
    assert (rgb.min(1) < 0.9).mean() > 0.01  # ink: lines, text, axes


def _assert_csv_equals(csv_path: Path, records: list[dict], x: str) -> None:
    rows = read_csv(csv_path)
    assert [r[x] for r in rows] == [float(r[x]) for r in records]
    for row, rec in zip(rows, records):
        for k, v in rec.items():
            if isinstance(v, bool):
                assert row[k] == float(v), k
            elif isinstance(v, (int, float)) and math.isfinite(v):
                assert row[k] == pytest.approx(float(v), rel=1e-12, abs=0), k
            elif v is None or (isinstance(v, float) and not math.isfinite(v)):
                assert k not in row or not math.isfinite(row[k]), k
        assert set(row) <= {k for k, v in rec.items() if not isinstance(v, (str, list, dict))}


def test_write_curves_csv_rows_equal_records_and_png_not_blank(tmp_path):
    rng = np.random.default_rng(0)
    recs = [{"step": s, "loss": float(3 * np.exp(-s / 10) + rng.normal(0, 0.05)), "loss_local": 1.0 / s,
             "lr": 1e-3 * min(1.0, s / 5), "val_mIoU": None if s % 5 else 0.1 * s, "collapse_warning": s == 3,
             "note": "text is not a scalar"} for s in range(1, 31)]
    paths = write_curves(recs, tmp_path, "curves")
    assert set(paths) == {"csv", "png"}  # no tensorboard here: the optional package is not installed
    _assert_csv_equals(tmp_path / "curves.csv", recs, "step")
    _assert_picture(tmp_path / "curves.png")


def test_scalar_records_one_row_per_step_the_later_wins():
    recs = [{"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.0}, {"step": 2, "loss": 3.5},
            {"step": 3, "loss": 3.0}, {"loss": 9.0}]
    assert scalar_records(recs) == [{"step": 1, "loss": 5.0}, {"step": 2, "loss": 3.5},
                                    {"step": 3, "loss": 3.0}]


def test_linear_probe_records_chosen_head_history(tmp_path):
    from common.probes.linear import LinearProbeConfig, ProbeData, train_linear_probe

    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)
    cfg = LinearProbeConfig(epochs=4, lrs=[0.003, 0.1], wds=[0.0], task="segmentation", progress=False,
                            num_classes=4)
    res = train_linear_probe(ProbeData.from_arrays(x, y, np.arange(3000) // 100), None, cfg)
    hist = res.meta["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    # the last epoch is the chosen head's row of the table; earlier epochs are its snapshots
    assert hist[-1]["train_loss"] == res.best["train_loss"]
    assert hist[-1]["val_mIoU"] == res.best["val_mIoU"] and hist[-1]["val_loss"] == res.best["val_loss"]
    assert all("val_mIoU" in h and "val_loss" in h for h in hist)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert hist[-1]["val_mIoU"] >= hist[0]["val_mIoU"]
    paths = write_probe_curves(hist, tmp_path, "curves_probe")
    _assert_csv_equals(Path(paths["csv"]), hist, "epoch")
    _assert_picture(Path(paths["png"]))


@pytest.mark.slow
def test_pretrain_writes_curves_and_a_resumed_run_appends_each_step_once(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from test_pretrain import _cfg, _write_dataset

        from pointprobe.pretrain.train import run_pretrain
    from common.featviz.report import build_report

    root = _write_dataset(tmp_path / "data", 2)
    out = tmp_path / "run"
    run_pretrain(_cfg(root, "train.steps=3", "train.batch_size=1", "train.save_every=2"), out)
    first = read_csv(out / "curves.csv")
    assert [r["step"] for r in first] == [1, 2, 3]
    # the run is resumed from its step-2 checkpoint (last.pth lost): step 3 is trained and logged again
    (out / "last.pth").unlink()
    for p in (out / "checkpoints").glob("step_0000003.pth"):
        p.unlink()
    run_pretrain(_cfg(root, "train.steps=5", "train.batch_size=1", "train.save_every=2"), out)
    log = [json.loads(s) for s in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 3, 4, 5]
    rows = read_csv(out / "curves.csv")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    kept = [log[0], log[1], log[3], log[4], log[5]]  # step 3 of the resumed run
    _assert_csv_equals(out / "curves.csv", kept, "step")
    assert rows[:2] == first[:2]
    _assert_picture(out / "curves.png")
    page = build_report(out).read_text()
    pictures = page.split('id="pictures"', 1)[1].split('id="configs"', 1)[0]
    assert "curves.png" in pictures


@pytest.mark.slow
def test_distill_writes_curves_beside_history(tmp_path):
    from test_distill_cluster import _distill_args

    from common.config import load_config
    from pointprobe.data.scannet_preprocess import preprocess_dataset
    from pointprobe.lift.distill import DistillConfig, run_distill
    from pointprobe.lift.lift import LiftConfig, run_lift
    from pointprobe.synth import generate_dataset

    generate_dataset(tmp_path / "raw", 2, seed=2, frames_per_scene=3, image_size=(120, 90), progress=False)
    preprocess_dataset(tmp_path / "raw", tmp_path / "pre", workers=1, progress=False,
                       log=lambda *a, **k: None)
    run_lift(load_config(LiftConfig, None, [
        f"data.raw={tmp_path / 'raw'}", f"data.root={tmp_path / 'pre'}", f"out={tmp_path / 'lift'}",
        "image_encoder.name=rgb", "fusion.frame_stride=1", "fusion.image_size=[120,90]", "progress=false",
        "device=cpu", "data.splits=[train,val]", "dtype=float32"]))
    out = tmp_path / "d"
    args = _distill_args(tmp_path / "pre", tmp_path / "lift", out, 2)
    run_distill(load_config(DistillConfig, None, args + ["export_predictions=false", "train.val_every=1"]))
    hist = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in read_csv(out / "curves.csv")] == [1, 2]
    _assert_csv_equals(out / "curves.csv", hist, "epoch")
    _assert_picture(out / "curves.png")


def test_point_and_video_probe_commands_write_probe_curves(tmp_path):
    from test_probe_seeds import _point_cfg, _vcache, _video_cfg, _write

    from pointprobe.probe import run_probe
    from videoprobe.probe import run_probes, write_probe_report

    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1.0, (4, 8)).astype(np.float32)
    for split, n in (("train", 4), ("val", 3)):
        scenes = {}
        for i in range(n):
            y = rng.integers(0, 4, 120)
            f = centers[y] + rng.normal(0, 0.9, (120, 8)).astype(np.float32)
            scenes[f"scene{split[0]}{i:03d}_00"] = (f, y)
        _write(tmp_path / "feat", split, scenes)
    run_probe(_point_cfg(tmp_path / "feat", tmp_path / "pp", seeds=[0, 1]))
    for suffix in ("", "_seed1"):  # one curve per trained probe file, named like it
        assert (tmp_path / "pp" / f"probe_demo{suffix}.pt").is_file()
        rows = read_csv(tmp_path / "pp" / f"curves_demo{suffix}.csv")
        assert [r["epoch"] for r in rows] == [1, 2, 3] and all("val_mIoU" in r for r in rows)
        _assert_picture(tmp_path / "pp" / f"curves_demo{suffix}.png")
    from common.probes.linear import load_probe

    hist = load_probe(tmp_path / "pp" / "probe_demo.pt").meta["history"]
    _assert_csv_equals(tmp_path / "pp" / "curves_demo.csv", hist, "epoch")

    _vcache(tmp_path / "vtrain", "train", 8, rng)
    _vcache(tmp_path / "vtest", "test", 5, rng)
    cfg = _video_cfg(tmp_path, tmp_path / "vp")
    cfg.train_cache, cfg.test_cache = str(tmp_path / "vtrain"), str(tmp_path / "vtest")
    outcome = run_probes(cfg)
    write_probe_report(cfg, outcome)
    hist = outcome["results"]["linear"]["history"]
    _assert_csv_equals(tmp_path / "vp" / "curves_linear.csv", hist, "epoch")
    _assert_picture(tmp_path / "vp" / "curves_linear.png")
