"""`probesuite compare`: the table against the source JSONs, config differences, baselines, bad folders."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from common.compare import differing_keys, majority_baseline
from common.compare_cli import main
from pointprobe.probe import run_probe
from tests.test_probe_seeds import _point_cfg, _video_cfg, point_features, video_caches  # noqa: F401
from videoprobe.bench import (
    BenchEncoderConfig,
    BenchmarkConfig,
    BenchSuiteConfig,
    tabulate,
    write_bench_report,
)
from videoprobe.probe import run_probes, write_probe_report


@pytest.fixture()
def runs(point_features, video_caches, tmp_path):  # noqa: F811
    a = tmp_path / "runs" / "point-a"
    b = tmp_path / "runs" / "point-b"
    run_probe(_point_cfg(point_features, a, seeds=[0, 1], n_boot=50))
    cfg_b = _point_cfg(point_features, b, n_boot=50)
    cfg_b.scene_fraction = 1.0
    run_probe(cfg_b)
    v = tmp_path / "runs" / "video"
    vcfg = _video_cfg(video_caches, v, n_boot=50)
    outcome = run_probes(vcfg)
    write_probe_report(vcfg, outcome)
    bench = tmp_path / "runs" / "bench"
    suite = BenchSuiteConfig(name="tiny",
                             encoders=[BenchEncoderConfig(name="videomae_vit_tiny", label="tiny")],
                             benchmarks=[BenchmarkConfig(name="SYN", group="appearance")],
                             probes=["linear", "knn"])
    cells = {("tiny", "SYN"): json.loads(json.dumps(outcome, default=str))}
    write_bench_report(suite, tabulate(suite.encoders, suite.benchmarks, suite.probes, cells), cells, bench)
    return [a, b, v, bench]


def test_compare_table_equals_the_source_jsons(runs, tmp_path, capsys):
    a, b, v, bench = runs
    junk = tmp_path / "runs" / "not-a-run"
    junk.mkdir()
    rc = main(["compare", *map(str, runs), str(junk), "--out", str(tmp_path / "report")])
    assert rc == 0
    rep = json.loads((tmp_path / "report" / "compare.json").read_text())
    rows = rep["rows"]
    assert [r["kind"] for r in rows] == ["point probe", "point probe", "video probe", "video probe",
                                        "video bench", "video bench"]
    for r, src in zip(rows[:2], (a, b)):
        table = json.loads((src / "results.json").read_text())
        s = table["rows"][0]
        assert r["value"] == s["mIoU"] and r["std"] == s["mIoU std"]
        assert [r["ci_low"], r["ci_high"]] == [s["mIoU ci_low"], s["mIoU ci_high"]]
        assert r["encoder"] == s["encoder"] and r["checkpoint"] == s["checkpoint"]
        assert r["seeds"] == s["seeds"]
        hist = table["meta"]["eval_class_histogram"]
        assert r["chance"] == pytest.approx(100 / 20)
        present = sum(1 for h in hist if h > 0)  # constant prediction: IoU of the majority class = its share
        assert r["majority"] == pytest.approx(100 * max(hist) / sum(hist) / present)
    assert rows[0]["std"] is not None and rows[1]["std"] is None  # two seeds vs one
    vt = json.loads((v / "probe.json").read_text())
    for r, s in zip(rows[2:4], vt["rows"]):
        assert r["value"] == s["top1"] and r["protocol"] == f"cached features, {s['probe']} probe"
        assert [r["ci_low"], r["ci_high"]] == [s["top1 ci_low"], s["top1 ci_high"]]
        assert r["chance"] == pytest.approx(100 / 3) and r["majority"] == pytest.approx(100 / 3)
    bt = json.loads((bench / "table.json").read_text())
    for r, s in zip(rows[4:], bt["rows"]):
        assert r["value"] == s["SYN"] and r["majority"] == pytest.approx(100 / 3)  # balanced test split
        assert r["std"] is None and [r["ci_low"], r["ci_high"]] == bt["meta"]["cells"]["tiny/SYN"]["results"][
            s["probe"]]["spread"]["top1"]["ci"]
    # only the keys that differ; the three point/video runs differ in e.g. scene_fraction and seeds
    # config keys: only those that differ between runs of one kind (the two point probes here)
    assert rep["differing_config_keys"] == ["scene_fraction", "seeds"]
    assert rows[0]["config: scene_fraction"] == 0.7 and rows[1]["config: scene_fraction"] == 1.0
    assert rows[0]["config: seeds"] == [0, 1] and rows[1]["config: seeds"] == []
    assert rows[2]["config: scene_fraction"] == ""  # not compared for a video probe
    # CSV: same values; markdown / HTML: the formatted spread; the junk folder: one line naming it
    with open(tmp_path / "report" / "compare.csv") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert float(csv_rows[0]["value"]) == rows[0]["value"] and float(csv_rows[0]["std"]) == rows[0]["std"]
    md = (tmp_path / "report" / "compare.md").read_text()
    assert f"{rows[0]['value']:.2f} ± {rows[0]['std']:.2f} [{rows[0]['ci_low']:.2f}" in md
    assert "n/a" in md
    assert "<table>" in (tmp_path / "report" / "compare.html").read_text()
    assert rep["skipped"] == [f"{junk}: not a result folder of the suite (no results.json, probe.json or "
                              "table.json)"]
    assert "point-a" in capsys.readouterr().out


def test_no_result_folder_is_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(tmp_path / "empty") in err and err.startswith("error:")


def test_differing_keys_only_the_differences():
    cfgs = [{"a": 1, "p": {"lr": 0.1, "wd": 0}, "out": "x", "l": [1, 2]},
            {"a": 1, "p": {"lr": 0.2, "wd": 0}, "out": "y", "l": [1, 2]},
            {"a": 1, "p": {"lr": 0.1, "wd": 0}, "out": "z", "l": [1, 2], "extra": True}]
    assert differing_keys(cfgs) == ["p.lr", "extra"]


def test_majority_baseline_numbers():
    hist = [6, 3, 1, 0]
    assert majority_baseline(hist, "top1") == pytest.approx(60.0)
    assert majority_baseline(hist, "mean_class") == pytest.approx(100 / 3)
    assert majority_baseline(hist, "mIoU") == pytest.approx(60.0 / 3)
    assert majority_baseline(hist, "top5") == pytest.approx(100.0)
    assert majority_baseline(None, "top1") is None
    assert majority_baseline(np.zeros(3, int).tolist(), "top1") is None


def test_console_module_answers_help():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "common.compare_cli", "compare", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "RUN_DIR" in r.stdout


def test_older_results_without_histogram_show_na(point_features, tmp_path):  # noqa: F811
    run = tmp_path / "old"
    run_probe(_point_cfg(point_features, run, n_boot=20))
    table = json.loads((run / "results.json").read_text())
    for key in ("eval_class_histogram", "num_classes", "seeds"):
        del table["meta"][key]
    for k in ("mIoU std", "mIoU ci_low", "mIoU ci_high", "seeds"):
        del table["rows"][0][k]
    (run / "results.json").write_text(json.dumps(table))
    from common.compare import compare_runs

    res = compare_runs([run], tmp_path / "r")
    row = res["rows"][0]
    assert row["majority"] is None and row["chance"] == pytest.approx(5.0)  # 20 classes from per_class_iou
    assert row["value"] == table["rows"][0]["mIoU"] and row["std"] is None and row["seeds"] == [0]
    md = (tmp_path / "r" / "compare.md").read_text()
    assert "| n/a |" in md
