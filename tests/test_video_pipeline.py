"""End to end on a tiny generated dataset: synth -> extract (resume, corrupt file) -> probes -> bench.

Every test here shares one generated dataset (4 classes x 4 videos, 16 frames of 64 px).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.cache import FeatureCache
from common.config import from_dict
from common.errors import CacheError
from videoprobe.cli import main as cli

pytestmark = pytest.mark.slow
torch.set_num_threads(1)

CLASSES = ["RedDisc", "BlueSquare", "MoveLeft", "MoveRight"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from videoprobe.data.synth import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("vp") / "synth"
    generate_dataset(root, SynthConfig(classes=CLASSES, videos_per_class=4, frames=16, size=64,
                                       clips_per_group=1, test_fraction=0.5), progress=False)
    return root


def _cfg(root: Path, out: Path, split: str = "train", **over):
    from videoprobe.extract import ExtractConfig

    d = {"data": {"kind": "synth", "root": str(root), "split": split},
         "encoder": {"name": "motion_energy"}, "views": {"num_clips": 2, "clip_len": 8, "frame_step": 2,
                                                          "size": 64},
         "out": str(out), "progress": False, "fsync": False, "save_tokens": True}
    for k, v in over.items():
        node = d
        *path, last = k.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    return from_dict(ExtractConfig, d)


def _videos(root: Path, split: str) -> list[str]:
    from videoprobe.data.datasets import build_video_dataset

    return sorted(it.video_id for it in build_video_dataset("synth", root, split)[0])


def test_extract_resume_after_interruption(synth, tmp_path, monkeypatch):
    import videoprobe.extract as ex

    full = tmp_path / "full"
    ref = ex.extract(_cfg(synth, full))
    ids = _videos(synth, "train")
    assert ref.written == len(ids) and not ref.failures

    calls = {"n": 0}
    real = ex.encode_views

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    part = tmp_path / "part"
    monkeypatch.setattr(ex, "encode_views", flaky)
    with pytest.raises(KeyboardInterrupt):
        ex.extract(_cfg(synth, part))
    assert len(FeatureCache(part)) == 3  # finished items survive (read from the un-merged journal)

    calls["n"] = -100  # no more interruptions; count the work done by the second run
    res = ex.extract(_cfg(synth, part))
    assert res.skipped == 3 and res.written == len(ids) - 3 and calls["n"] == -100 + len(ids) - 3
    a, b = FeatureCache(full), FeatureCache(part)
    assert a.items() == b.items() == ids and not b.unmerged_journals
    for item in ids:
        fa, fb = a[item], b[item]
        np.testing.assert_array_equal(fa["features"], fb["features"])
        np.testing.assert_array_equal(fa["labels"], fb["labels"])
        assert fb["tokens"].shape[:2] == (2, 7) and fb["tokens"].dtype == np.float16
        assert fb["frame_indices"].shape == (2, 8)


def test_corrupt_video_is_reported_and_skipped(synth, tmp_path, capsys):
    root = tmp_path / "synth"
    shutil.copytree(synth, root)
    bad = sorted((root / "videos" / "MoveLeft").glob("*.mp4"))[-1]
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(300))  # a broken mp4
    out = tmp_path / "cache"
    over = [f"data.root={root}", "data.kind=synth", "data.split=train", "encoder.name=frame_stats",
            "views.num_clips=1", "views.size=64", f"out={out}", "progress=false", "fsync=false"]
    rc = cli(["extract", *over])
    cap = capsys.readouterr()
    assert rc == 1
    text = cap.err  # failures go to stderr, as pointprobe's do; the summary line to stdout
    assert f"1 of {len(_videos(root, 'train'))} videos failed" in text
    assert bad.stem in text and str(bad) in text
    assert bad.stem not in cap.out and "wrote" in cap.out
    cache = FeatureCache(out)
    assert bad.stem not in cache.items() and len(cache) == len(_videos(root, "train")) - 1
    assert cache.key.encoder == "frame_stats" and cache.key.checkpoint_sha256 == "none"
    assert (out / "extract_config.yaml").is_file()

    # a second run retries only the failed video and still reports it
    rc = cli(["extract", *over])
    assert rc == 1 and "wrote 0 videos" in capsys.readouterr().out
    # another encoder into the same folder is refused (one-line error, exit 2)
    rc = cli(["extract", *over[:3], "encoder.name=motion_energy", *over[4:]])
    assert rc == 2 and "motion_energy" in capsys.readouterr().err


@pytest.fixture(scope="module")
def caches(synth, tmp_path_factory) -> dict[str, Path]:
    from videoprobe.extract import extract

    base = tmp_path_factory.mktemp("caches")
    out = {}
    for split in ("train", "test"):
        out[split] = base / split
        extract(_cfg(synth, out[split], split))
    return out


def test_probes_cli_report_and_records(caches, tmp_path, capsys):
    out = tmp_path / "probe"
    rc = cli(["probe", f"train_cache={caches['train']}", f"test_cache={caches['test']}", f"out={out}",
              "probes=[linear,knn,attentive]", "linear.epochs=5", "linear.batch_size=8",
              "linear.val_fraction=0.25", "attentive.epochs=3", "attentive.batch_size=8", "knn.ks=[5]",
              "progress=false"])
    assert rc == 0, capsys.readouterr().err
    rep = json.loads((out / "probe.json").read_text())
    assert [r["probe"] for r in rep["rows"]] == ["linear", "knn", "attentive"]
    for r in rep["rows"]:
        assert 0 <= r["top1"] <= r["top5"] <= 100 and 0 <= r["mean_class"] <= 100
    meta = rep["meta"]
    assert meta["encoder"] == "motion_energy" and meta["checkpoint_sha256"] == "none"
    assert len(meta["feature_config_hash"]) == 16 and "[train]" in meta["train"] and "[test]" in meta["test"]
    assert (out / "config.yaml").is_file() and (out / "probe.md").is_file()


def test_knn_matches_reference_loop(caches):
    from videoprobe.probe import knn_defaults, load_split, run_probe

    train, test = load_split(caches["train"], None), load_split(caches["test"], None)
    res = run_probe("knn", train, test, knn_defaults(ks=[3], temperature=0.1), progress=False)
    # independent reference: per test view, the 3 most similar training videos (mean of views)
    bank = np.stack([train.features(i).mean(0) for i in train.ids]).astype(np.float64)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    correct = 0
    for item, y in zip(test.ids, test.labels):
        votes = np.zeros(len(train.class_names))
        for f in test.features(item).astype(np.float64):
            sim = bank @ (f / np.linalg.norm(f))
            for j in np.argsort(-sim)[:3]:
                votes[train.labels[j]] += np.exp(sim[j] / 0.1)
        correct += int(np.argmax(votes) == y)
    assert res["top1"] == pytest.approx(100.0 * correct / len(test.ids))


def test_motion_subset_is_solved_by_motion_energy(caches, synth):
    from videoprobe.probe import knn_defaults, load_split, run_probe, select_classes

    names = json.loads((synth / "classes.json").read_text())
    keep = select_classes("motion", sorted(CLASSES), synth / "classes.json")
    assert keep == sorted(names["motion"]) == ["MoveLeft", "MoveRight"]
    assert select_classes("appearance", sorted(CLASSES), synth / "classes.json") == ["BlueSquare", "RedDisc"]
    # MoveLeft vs MoveRight differ only in the direction of motion (same looks, same positions)
    train, test = load_split(caches["train"], keep), load_split(caches["test"], keep)
    assert list(train.labels) == [0, 0, 1, 1] and train.class_names == keep
    assert run_probe("knn", train, test, knn_defaults(ks=[3]), progress=False)["top1"] == 100.0


def test_twlv_export_import_roundtrip(caches, tmp_path):
    from videoprobe.probe import knn_defaults, load_split, run_probe
    from videoprobe.twlv import export_twlv, import_twlv

    n = export_twlv(caches["train"], tmp_path / "twlv")
    src = FeatureCache(caches["train"])
    assert n == len(src)
    item = src.items()[0]
    d = tmp_path / "twlv" / "train"
    c, v = np.load(d / f"{item}_c.npy"), np.load(d / f"{item}_v.npy")
    meta = json.loads((d / f"{item}.json").read_text())
    np.testing.assert_allclose(c, src[item]["features"], rtol=1e-6)  # 2 clips x 1 crop
    np.testing.assert_allclose(v, c.mean(0), rtol=1e-6)
    assert meta["annotation"] == int(src[item]["labels"][0]) and meta["frames"] == 16
    assert len(meta["clip_times"]) == 2 and meta["duration"] == pytest.approx(1.6)

    export_twlv(caches["test"], tmp_path / "twlv")
    names = src.meta["class_names"]
    assert import_twlv(d, tmp_path / "imp_train", class_names=names) == n
    import_twlv(tmp_path / "twlv" / "val", tmp_path / "imp_test", class_names=names)  # a test cache -> val
    imported = FeatureCache(tmp_path / "imp_train")
    np.testing.assert_allclose(imported[item]["features"], c)
    a = run_probe("knn", load_split(caches["train"], None), load_split(caches["test"], None),
                  knn_defaults(ks=[3]), progress=False)
    imp = {s: load_split(tmp_path / f"imp_{s}", None) for s in ("train", "test")}
    b = run_probe("knn", imp["train"], imp["test"], knn_defaults(ks=[3]), progress=False)
    assert a["top1"] == b["top1"]
    with pytest.raises(CacheError):  # a different encoder name cannot reuse the cache
        import_twlv(d, tmp_path / "imp_train", encoder="other", class_names=names)


def test_bench_suite_table(synth, tmp_path):
    from videoprobe.bench import BenchSuiteConfig, run_suite

    data = {"kind": "synth", "root": str(synth)}
    suite = from_dict(BenchSuiteConfig, {
        "name": "tiny", "out": str(tmp_path / "bench"),
        "encoders": [{"name": "frame_stats", "clip_len": 4, "frame_step": 4},
                     {"name": "motion_energy", "clip_len": 8, "frame_step": 2}],
        "benchmarks": [{"name": "app", "group": "appearance", "data": data, "classes": "appearance"},
                       {"name": "mot", "group": "motion", "data": data, "classes": "motion"}],
        "probes": ["knn"], "views": {"num_clips": 1, "size": 64}, "knn": {"ks": [3]},
        "extract": {"fsync": False}, "progress": False,
    })
    res = run_suite(suite)
    rows = res["rows"]
    assert [r["encoder"] for r in rows] == ["frame_stats", "motion_energy"]
    for r in rows:
        assert r["appearance avg"] == r["app"] and r["motion avg"] == r["mot"]
        assert r["avg"] == pytest.approx((r["app"] + r["mot"]) / 2, abs=0.01)
    out = tmp_path / "bench"
    assert (out / "table.md").is_file() and (out / "table_knn.png").stat().st_size > 1000
    table = json.loads((out / "table.json").read_text())
    assert table["meta"]["cells"]["motion_energy/mot"]["checkpoint_sha256"] == "none"
    # both benchmarks share one dataset: one cache per encoder and split, not per benchmark
    assert len(list((out / "cache" / "motion_energy").iterdir())) == 1


@pytest.mark.dist
def test_torchrun_two_ranks_shard_and_merge(synth, tmp_path):
    out = tmp_path / "dist"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           "-m", "videoprobe.cli", "extract", f"data.root={synth}", "data.kind=synth",
           "encoder.name=frame_stats", "views.size=64", f"out={out}", "progress=false", "fsync=false",
           "device=cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cache = FeatureCache(out)
    assert cache.items() == _videos(synth, "train") and not cache.unmerged_journals
