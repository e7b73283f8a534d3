"""Streamed evaluation: `pointprobe probe eval_source=stream` runs the encoder on each evaluation scene
and applies every trained head on the fly; the numbers equal those of the cached path."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pointprobe.extract import ExtractConfig, PointDataConfig, extract
from pointprobe.models.registry import PointEncoderConfig
from pointprobe.probe import SegProbeConfig, run_probe, stream_confusions, train_one
from tools.bench_scale_points import room_scene, write_scene

TINY_PTV3 = {"enc_channels": [8, 16, 24], "enc_num_head": [1, 2, 3], "enc_depths": [1, 1, 1],
             "enc_patch_size": [64, 64, 64], "stride": [2, 2], "drop_path": 0.0}


@pytest.fixture(scope="module")
def feats(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    data = root / "data"
    for i in range(7):
        split = "val" if i < 3 else "train"
        write_scene(data / split / f"scene{i:04d}_00", room_scene(1500 + 300 * i, 10 + i))
    # one val scene without labelled points: an all-zero confusion matrix on both paths
    y = np.load(data / "val" / "scene0002_00" / "segment20.npy")
    np.save(data / "val" / "scene0002_00" / "segment20.npy", np.full_like(y, -1))
    out = root / "feats"
    cfg = ExtractConfig(data=PointDataConfig(root=str(data)), out=str(out), grid_size=0.05,
                        encoder=PointEncoderConfig(name="ptv3", config=TINY_PTV3, seed=3),
                        storage={"train": "subsample"}, points_per_scene=600)
    assert extract(cfg, progress=False) == {"train": {}, "val": {}}
    return root, data, out


def _cfg(out, tmp, **kw) -> SegProbeConfig:
    cfg = SegProbeConfig(features=[str(out)], out=str(tmp), seeds=[0, 1], n_boot=20, **kw)
    cfg.probe.epochs = 2
    cfg.probe.lrs = [0.01, 0.03]
    cfg.probe.wds = [0.0]
    cfg.device = "cpu"
    return cfg


def test_streamed_equals_cached_per_head(feats, tmp_path, monkeypatch, capsys):
    _, _, out = feats
    cached = run_probe(_cfg(out, tmp_path / "cached"))
    monkeypatch.setenv("PROBESUITE_PROGRESS_SECONDS", "0")  # the streamed pass shows progress, in log lines
    capsys.readouterr()
    streamed = run_probe(_cfg(out, tmp_path / "stream", eval_source="stream"))
    assert "stream val: 3/3 scene (100%)" in capsys.readouterr().err
    a, b = cached["records"][0], streamed["records"][0]
    assert len(a["per_seed"]) == len(b["per_seed"]) == 2  # two heads (one per seed), one pass over val
    for ha, hb in zip(a["per_seed"], b["per_seed"]):
        for m in ("mIoU", "mAcc", "allAcc"):
            assert abs(ha[m] - hb[m]) < 1e-6, (m, ha[m], hb[m])
        np.testing.assert_allclose(ha["iou"], hb["iou"], atol=1e-6)
    ca = np.load(tmp_path / "cached" / "scene_confusion.npz")
    cb = np.load(tmp_path / "stream" / "scene_confusion.npz")
    assert sorted(ca.files) == sorted(cb.files)
    for k in ca.files:
        assert ca[k].shape[0] == 3 and np.array_equal(ca[k], cb[k])
    assert a["spread"]["mIoU"]["ci"] == pytest.approx(b["spread"]["mIoU"]["ci"], abs=1e-9)
    meta = json.loads((tmp_path / "stream" / "results.json").read_text())["meta"]
    assert meta["eval_source"] == ["stream"] and b["eval_scenes"] == 3


def test_rank_shards_sum_to_the_whole(feats):
    _, _, out = feats
    cfg = _cfg(out, "unused", eval_source="stream")
    t = train_one(out, cfg)
    full, names, fail = stream_confusions(out, [t["result"]], cfg, 20)
    parts = [stream_confusions(out, [t["result"]], cfg, 20, rank_=r, world_=2)[0] for r in (0, 1)]
    assert not fail and len(names) == 3
    assert np.array_equal(parts[0] + parts[1], full)
    assert parts[0][:, 1].sum() == 0 and parts[1][:, 0].sum() == 0  # scene 1 on rank 1, scene 0 on rank 0


def test_val_not_stored_auto_streams_and_bad_scene_reported(feats, tmp_path):
    root, data, out = feats
    no_val = tmp_path / "feats"
    shutil.copytree(out, no_val)
    shutil.rmtree(no_val / "val")
    bad = tmp_path / "data"
    shutil.copytree(data, bad)
    (bad / "val" / "scene0001_00" / "normal.npy").unlink()
    res = run_probe(_cfg(no_val, tmp_path / "p", eval_source="auto", data_root=str(bad)))
    rec = res["records"][0]
    assert rec["eval_source"] == "stream" and rec["eval_scenes"] == 2
    notes = json.loads((tmp_path / "p" / "results.json").read_text())["meta"]["notes"]
    assert any("scene0001_00 not evaluated" in n and "normal.npy" in n for n in notes)
    with pytest.raises(Exception, match="no feature cache for split 'val'"):
        run_probe(_cfg(no_val, tmp_path / "q"))  # eval_source=cache (the default) still needs the cache


def test_probe_dry_run_trains_and_writes_nothing(feats, tmp_path, capsys):
    from pointprobe.cli import main

    _, data, out = feats
    bad = tmp_path / "data"
    shutil.copytree(data, bad)
    (bad / "val" / "scene0001_00" / "coord.npy").write_bytes(b"not a npy file")
    rc = main(["probe", "--dry-run", f"features=[{out}]", f"out={tmp_path / 'p'}", "eval_source=stream",
               f"data_root={bad}", "device=cpu"])
    text = capsys.readouterr().out
    assert rc == 1 and not (tmp_path / "p").exists()
    assert "train 4 scenes (subsample storage), 2,400 labelled rows" in text
    assert "eval (stream): 3 scenes" in text and "points/s here" in text
    assert "scene0001_00" in text and "coord.npy: unreadable" in text
    assert main(["probe", "--dry-run", f"features=[{out}]", f"out={tmp_path / 'p'}"]) == 0
    assert "eval (cache): 3 scenes" in capsys.readouterr().out and not (tmp_path / "p").exists()


def test_torchrun_two_ranks_same_as_one_process(tmp_path):
    """A real 2-process torchrun (gloo): the scenes are sharded, the matrices summed, rank 0 writes; the
    per-scene confusion matrices equal those of one process (same thread count, so the same heads)."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    data = tmp_path / "data"
    for i in range(7):
        write_scene(data / ("val" if i < 3 else "train") / f"scene{i:04d}_00", room_scene(2000, 40 + i))
    out = tmp_path / "f"
    cfg = ExtractConfig(data=PointDataConfig(root=str(data)), out=str(out),
                        encoder=PointEncoderConfig(name="raw"), storage={"train": "subsample", "val": "none"},
                        points_per_scene=300)
    extract(cfg, progress=False)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(repo), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    args = ["probe", f"features=[{out}]", "eval_source=stream", "probe.epochs=2", "n_boot=10", "device=cpu"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runs = {"one": [sys.executable, "-m", "pointprobe.cli"],
            "two": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                    "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "pointprobe.cli"]}
    for name, cmd in runs.items():
        proc = subprocess.run([*cmd, *args, f"out={tmp_path / name}"], env=env, cwd=repo, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    a = np.load(tmp_path / "one" / "scene_confusion.npz")
    b = np.load(tmp_path / "two" / "scene_confusion.npz")
    assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    assert a[a.files[0]].shape[0] == 3 and a[a.files[0]].sum() > 0
