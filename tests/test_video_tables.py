"""videoprobe probe / bench tables: checkpoint column, chance line, small-data notes in log and JSON."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from common.cache import CacheKey, CacheWriter
from videoprobe.bench import (
    BenchEncoderConfig,
    BenchmarkConfig,
    BenchSuiteConfig,
    tabulate,
    write_bench_report,
)
from videoprobe.probe import ProbeConfig, knn_defaults, run_probes, write_probe_report

D = 6
CLASSES = ["ApplyEyeMakeup", "Biking", "Diving"]


def _cache(path, split, per_class, rng, sha):
    key = CacheKey(encoder="videomae_vit_tiny", checkpoint_sha256=sha, config_hash="1" * 16, dataset="ucf101",
                   split=split)
    with CacheWriter(path, key, D, meta={"class_names": CLASSES}) as w:
        for c in range(len(CLASSES)):
            for i in range(per_class):
                f = np.eye(D, dtype=np.float32)[c] * 2 + rng.normal(0, 0.3, (2, D)).astype(np.float32)
                w.write(f"v_{CLASSES[c]}_g{i:02d}_c01", f, np.full(2, c))


@pytest.fixture()
def caches(tmp_path):
    rng = np.random.default_rng(0)
    _cache(tmp_path / "train", "train", 4, rng, "random:0")
    _cache(tmp_path / "test", "test", 2, rng, "random:0")
    return tmp_path


def test_probe_table_checkpoint_and_small_data_notes(caches, tmp_path, caplog):
    cfg = ProbeConfig(train_cache=str(caches / "train"), test_cache=str(caches / "test"),
                      out=str(tmp_path / "probe"), probes=["linear", "knn"], knn=knn_defaults(ks=[50]),
                      progress=False)
    cfg.linear.epochs, cfg.linear.batch_size, cfg.linear.val_fraction = 3, 8, 0.1
    cfg.linear.lrs, cfg.linear.wds = [1e-3, 1e-2], [0.0]
    with caplog.at_level(logging.WARNING):
        outcome = run_probes(cfg)
        write_probe_report(cfg, outcome)
    rep = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert [r["checkpoint"] for r in rep["rows"]] == ["random:0", "random:0"]
    notes = rep["meta"]["notes"]
    assert any("top-5" in n and "3 classes" in n for n in notes)
    assert any(n.startswith("knn:") and "k=50" in n and "12" in n for n in notes)  # 12 training videos
    assert any(n.startswith("linear:") and "only 1" in n for n in notes)  # one held-out video
    assert any(n.startswith("linear:") and "lr" in n and "grid" in n for n in notes)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("top-5" in m for m in warned) and any("k=50" in m for m in warned)
    assert "top-5" in (tmp_path / "probe" / "probe.md").read_text()

    # the bench suite table of that cell: checkpoint column, notes, chart with a chance line
    enc = BenchEncoderConfig(name="videomae_vit_tiny", label="vit tiny (random)")
    suite = BenchSuiteConfig(name="tiny", encoders=[enc],
                             benchmarks=[BenchmarkConfig(name="UCF101", group="appearance")],
                             probes=["linear", "knn"])
    cells = {("vit tiny (random)", "UCF101"): json.loads(json.dumps(outcome, default=str))}
    rows = tabulate(suite.encoders, suite.benchmarks, suite.probes, cells)
    write_bench_report(suite, rows, cells, tmp_path / "bench")
    table = json.loads((tmp_path / "bench" / "table.json").read_text())
    assert table["columns"][:3] == ["encoder", "checkpoint", "probe"]
    assert {r["checkpoint"] for r in table["rows"]} == {"random:0"}
    assert any("top-5" in n for n in table["meta"]["notes"])
    assert (tmp_path / "bench" / "table_knn.png").stat().st_size > 1000


def test_probe_cli_prints_checkpoint_column(caches, tmp_path, capsys):
    from videoprobe.cli import main

    rc = main(["probe", f"train_cache={caches / 'train'}", f"test_cache={caches / 'test'}",
               f"out={tmp_path / 'p'}", "probes=[knn]", "knn.ks=[3]", "progress=false"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| probe | checkpoint |" in out and "| knn | random:0 |" in out
