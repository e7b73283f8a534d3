"""pointprobe probe tables: checkpoint column, absent classes marked, mIoU class count, small-data notes."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from common.cache import CacheKey, CacheWriter
from pointprobe.probe import SegProbeConfig, run_probe

D = 8


def _scene(rng, labels, shift_to=None):
    """Features: class c -> unit vector c (+ noise); ``shift_to`` = (mask, class) gives points the
    features of another class (the probe predicts that class there)."""
    f = np.eye(D, dtype=np.float32)[labels] * 3 + rng.normal(0, 0.05, (len(labels), D)).astype(np.float32)
    if shift_to is not None:
        mask, c = shift_to
        f[mask] = np.eye(D, dtype=np.float32)[c] * 3
    return f


def _write(folder, split, scenes, sha="random:0"):
    key = CacheKey(encoder="sparseunet", checkpoint_sha256=sha, config_hash="0" * 16, split=split)
    meta = {"label_set": "segment20", "encoder": {"label": "sparseunet pre-trained (demo)"}}
    with CacheWriter(folder / split, key, D, meta=meta) as w:
        for name, (f, y) in scenes.items():
            w.write(name, f, y)


@pytest.fixture()
def features(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "feat"
    train = {}
    for i in range(3):
        y = rng.integers(0, 4, 300)  # classes 0..3 in training
        train[f"scene000{i}_00"] = (_scene(rng, y), y)
    _write(folder, "train", train)
    ev = {}
    for i in range(2):
        y = rng.integers(0, 3, 200)  # class 3 absent from the evaluation split...
        mask = np.zeros(200, bool)
        mask[:10] = True  # ...but predicted on 10 points (features of class 3, target class y)
        ev[f"scene010{i}_00"] = (_scene(rng, y, (mask, 3)), y)
    _write(folder, "val", ev)
    return folder


def test_tables_mark_absent_classes_checkpoint_and_notes(features, tmp_path, caplog):
    out = tmp_path / "probe"
    cfg = SegProbeConfig(features=[str(features)], out=str(out))
    cfg.probe.lrs, cfg.probe.wds, cfg.probe.epochs, cfg.probe.progress = [0.01, 0.1], [0.0], 3, False
    with caplog.at_level(logging.WARNING):
        run_probe(cfg)
    res = json.loads((out / "results.json").read_text())
    row = res["rows"][0]
    assert row["checkpoint"] == "random:0"
    assert row["mIoU classes"] == "4/20"  # 3 present + 1 predicted but absent; 16 neither: left out
    details = json.loads((out / "details.json").read_text())["records"][0]
    iou = np.array([v if v is not None else np.nan for v in details["iou"]])
    assert row["mIoU"] == pytest.approx(np.mean(iou[:4]), abs=0.01) and iou[3] == 0.0
    assert any("Pointcept" in f for f in res["footnotes"])
    # small-data traps: 3 training scenes -> the head is chosen on 1 scene; lr at the edge of a 2-value grid
    notes = res["meta"]["notes"]
    assert any("validation set" in n and "only 1" in n for n in notes)
    assert any("edge" in n or "largest" in n or "smallest" in n for n in notes)
    assert any("validation set" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "Notes:" in (out / "results.md").read_text()

    pc = json.loads((out / "per_class_iou.json").read_text())
    by_class = {r["class"]: r for r in pc["rows"]}
    name = "sparseunet pre-trained (demo)"
    assert by_class["wall"][name] > 50 and by_class["wall"]["val points"] > 0
    assert by_class["bed"][name] == "absent (predicted: 0)"  # class 3
    assert by_class["sofa"][name] == "absent" and by_class["sofa"]["val points"] == 0
    assert any("averaged over 4 of 20" in f for f in pc["footnotes"])
    md = (out / "per_class_iou.md").read_text()
    assert "| sofa | 0 | absent |" in md
    # output names are slugs: no spaces or parentheses
    probes = [p.name for p in out.glob("probe_*.pt")]
    assert probes == ["probe_sparseunet_pre-trained_demo.pt"]
