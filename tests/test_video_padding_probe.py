"""Short clips are padded visibly (cache meta, warning, probe JSON) and a test split with fewer
classes than the train split is aligned by class name (issue 12 item 3; issue 21 item 3)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from common.cache import FeatureCache
from common.config import from_dict
from videoprobe.data.synth import render_video, write_video

torch.set_num_threads(1)


def _extract(list_file: Path, out: Path, split: str) -> None:
    from videoprobe.extract import ExtractConfig, extract

    cfg = from_dict(ExtractConfig, {
        "data": {"kind": "list", "root": str(list_file.parent), "list_file": str(list_file), "split": split},
        "encoder": {"name": "motion_energy"},
        "views": {"num_clips": 1, "clip_len": 8, "frame_step": 2, "size": 32},
        "out": str(out), "progress": False, "fsync": False})
    res = extract(cfg)
    assert not res.failures


@pytest.fixture(scope="module")
def lists(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pad")
    rng = np.random.default_rng(0)
    for name, cls, n in [("a1", "RedDisc", 30), ("b1", "MoveLeft", 30), ("c1", "MoveRight", 6),
                         ("a2", "RedDisc", 30), ("b2", "MoveLeft", 10)]:
        write_video(d / f"{name}.mp4", render_video(cls, n, 32, rng), fps=10)
    # integer labels without a class file: the train list has classes 0..2, the test list only 0..1
    (d / "train.txt").write_text("a1.mp4 0\nb1.mp4 1\nc1.mp4 2\n")
    (d / "test.txt").write_text("a2.mp4 0\nb2.mp4 1\n")
    return d


def test_padding_recorded_in_cache_meta_and_probe_json(lists: Path, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    from videoprobe.probe import ProbeConfig, run_probes, write_probe_report

    with caplog.at_level(logging.WARNING, logger="videoprobe.extract"):
        _extract(lists / "train.txt", tmp_path / "train", "train")
    warnings = [r.getMessage() for r in caplog.records if "shorter than the encoder's span" in r.getMessage()]
    assert len(warnings) == 1 and "1 of 3 videos" in warnings[0] and "15 frames" in warnings[0]
    meta = FeatureCache(tmp_path / "train").meta
    assert meta["padding"] == {"span": 15, "count": 1, "videos": ["c1"]}
    _extract(lists / "test.txt", tmp_path / "test", "test")
    assert FeatureCache(tmp_path / "test").meta["padding"] == {"span": 15, "count": 1, "videos": ["b2"]}
    _extract(lists / "train.txt", tmp_path / "train", "train")  # a resumed run keeps the record
    assert FeatureCache(tmp_path / "train").meta["padding"]["videos"] == ["c1"]

    cfg = from_dict(ProbeConfig, {"train_cache": str(tmp_path / "train"),
                                  "test_cache": str(tmp_path / "test"),
                                  "out": str(tmp_path / "probe"), "probes": ["knn"], "knn": {"ks": [2]},
                                  "progress": False})
    outcome = run_probes(cfg)  # the test cache's classes are ["0", "1"], the train cache's ["0", "1", "2"]
    assert outcome["classes"] == ["0", "1", "2"] and outcome["num_test_videos"] == 2
    assert outcome["padding"]["train"]["count"] == 1
    _, js = write_probe_report(cfg, outcome)
    rec = json.loads(Path(js).read_text())
    text = json.dumps(rec)
    assert '"padded_videos": {"train": 1, "test": 1}' in text and '"b2"' in text


def test_load_split_aligns_a_test_cache_lacking_the_top_class(tmp_path: Path) -> None:
    from common.cache import CacheKey, CacheWriter
    from videoprobe.probe import load_split

    key = CacheKey(encoder="e", checkpoint_sha256="none", config_hash="h", preprocessing={}, dataset="d",
                   split="test")
    with CacheWriter(tmp_path / "test", key, 4, meta={"class_names": ["0", "1"]}) as w:  # labels seen: 0, 1
        w.write("v0", np.ones((1, 4), np.float32), np.array([0]))
        w.write("v1", np.ones((1, 4), np.float32), np.array([1]))
    split = load_split(tmp_path / "test", ["1", "2", "0"], ["0", "1"])  # was: ValueError '2' is not in list
    assert dict(zip(split.ids, split.labels.tolist())) == {"v0": 2, "v1": 0}
