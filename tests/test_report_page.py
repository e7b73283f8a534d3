"""featviz report: results before pictures before configs, input data folders skipped, whole-file JSON
parsing, and the page as a real headless browser draws it (Debian's chromium; skipped without it)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from common.config import save_config
from common.featviz.report import MAX_TEXT, build_report, input_data_reason
from common.report import bar_chart_png, write_table
from pointprobe.probe import SegProbeConfig


def _results_folder(root: Path) -> Path:
    """A run as the tools write it, plus the input data folders a demo keeps beside its results."""
    probe = root / "probe"
    write_table([{"encoder": "sparseunet pre-trained (demo)", "checkpoint": "3f2a9c01b2d4", "mIoU": 41.2},
                 {"encoder": "sparseunet random init", "checkpoint": "random:0", "mIoU": 12.5}],
                probe / "results", "Linear probe, val split", meta={"eval split": "val"},
                footnotes=["checkpoint: random:<seed> = random weights"])
    bar_chart_png({"a": [50.0, 20.0, 30.0], "b": [10.0, 5.0, 8.0]}, probe / "per_class_iou.png",
                  title="Per-class IoU", labels=["wall", "floor", "chair"])
    save_config(SegProbeConfig(), probe)
    # a JSON table and a JSON record both longer than what the page shows of a file
    write_table([{"scene": f"scene{i:04d}_00", "mIoU": float(i)} for i in range(3000)], probe / "per_scene",
                "Per-scene mIoU")
    (probe / "details.json").write_text(json.dumps({"records": [{"iou": list(range(30000))}]}))
    assert (probe / "details.json").stat().st_size > MAX_TEXT
    # input data: preprocessed scenes, a raw ScanNet root, a generated video dataset, loose footage
    for i in range(3):
        d = root / "scannet" / "train" / f"scene000{i}_00"
        d.mkdir(parents=True)
        np.save(d / "coord.npy", np.zeros((5, 3), np.float32))
        save_config({"note": "not a result"}, d / "meta.yaml")
    scan = root / "raw" / "scans" / "scene0000_00"
    scan.mkdir(parents=True)
    (scan / "scene0000_00_vh_clean_2.ply").write_bytes(b"ply\nformat ascii 1.0\nend_header\n")
    (scan / "scene0000_00.aggregation.json").write_text(json.dumps({"segGroups": []}))
    (root / "raw" / "scannetv2_train.txt").write_text("scene0000_00\n")
    (root / "synth" / "videos" / "Wave").mkdir(parents=True)
    (root / "synth" / "classes.json").write_text(json.dumps({"classes": []}))
    (root / "synth" / "videos" / "Wave" / "v_Wave_g01_c01.mp4").write_bytes(b"\0" * 64)
    (root / "footage").mkdir()
    (root / "footage" / "clip.avi").write_bytes(b"\0" * 64)
    # featviz video output: an MP4 beside its PNG is a result
    viz = root / "video_viz"
    bar_chart_png({"x": 1.0, "y": 2.0}, viz / "frames.png")
    (viz / "frames.mp4").write_bytes(b"\0" * 64)
    return root


def test_input_data_rule():
    assert input_data_reason(Path("s"), [], ["coord.npy", "color.npy"])
    assert input_data_reason(Path("s"), [], ["scene0000_00_vh_clean_2.ply"])
    assert input_data_reason(Path("r"), ["scans"], ["scannetv2_val.txt"])
    assert input_data_reason(Path("d"), ["videos"], ["classes.json"])
    assert input_data_reason(Path("u"), [], ["classInd.txt", "trainlist01.txt"])
    assert input_data_reason(Path("f"), [], ["a.avi", "b.mp4"])
    assert input_data_reason(Path("v"), [], ["frames.mp4", "frames.png"]) is None  # featviz video output
    assert input_data_reason(Path("p"), [], ["results.json", "results.md", "config.yaml"]) is None


def test_report_order_skips_and_long_json(tmp_path):
    root = _results_folder(tmp_path / "run")
    page = build_report(root)
    text = page.read_text()
    first_table = text.index("<table")
    first_img = text.index("<img")
    first_config = text.index("config.yaml</a></summary>")
    assert first_table < first_img < first_config  # results, then pictures, then configs
    assert text.index("Linear probe, val split") < text.index("Per-scene mIoU")  # headline table first
    assert "not valid JSON" not in text  # parsed whole, not cut at 60,000 characters
    assert "details.json" in text and "(3000 rows)" in text
    for data_file in ("coord.npy", "meta.yaml", "vh_clean_2.ply", "aggregation.json", "scannetv2_train.txt",
                      "v_Wave_g01_c01.mp4", "clip.avi"):
        assert f"{data_file}</a>" not in text and f"{data_file}\"" not in text, data_file
    assert 'src="video_viz/frames.mp4"' in text
    assert "Skipped 6 input data folder(s)" in text and "scannet/train/* (3 folders" in text


def test_report_invalid_json_still_named(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "broken.json").write_text('{"rows": [1, 2')
    text = build_report(tmp_path / "run").read_text()
    assert "broken.json</a>: not valid JSON (line 1" in text


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary (tools/setup_system.sh installs Debian's "
                    "chromium)")
def test_report_page_in_headless_chromium(tmp_path):
    from PIL import Image

    root = _results_folder(tmp_path / "run")
    page = build_report(root)
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "shot.png"
    for extra in ([f"--screenshot={shot}", "--window-size=1280,1400"], ["--dump-dom"]):
        proc = subprocess.run([*base, *extra, page.resolve().as_uri()], capture_output=True, text=True,
                              timeout=180)
        assert proc.returncode == 0, proc.stderr[-2000:]
        if "--dump-dom" in extra:
            dom = proc.stdout
    # the DOM chromium built: the results table comes before the first picture, the picture loads
    assert "<table" in dom and "<img" in dom and dom.index("<table") < dom.index("<img")
    assert "sparseunet random init" in dom[:dom.index("<img")]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (1400, 1280)
    # the table area (upper part of the page) is drawn: text and borders, not one flat colour
    top = img[150:450, :500]
    assert top.std() > 10 and len(np.unique(top.reshape(-1, 3), axis=0)) > 20
    # the bar chart is drawn further down: its blue and orange bars are on the screenshot
    lower = img[450:].reshape(-1, 3)
    blue = np.abs(lower - [31, 119, 180]).max(1) <= 10
    orange = np.abs(lower - [255, 127, 14]).max(1) <= 10
    assert blue.sum() > 500 and orange.sum() > 500
