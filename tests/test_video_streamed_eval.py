"""`videoprobe probe eval_source=stream` (issue 15): the test split is decoded and encoded on the fly with
the training cache's encoder and every trained probe is applied to it; nothing of the test split is
written, and the numbers equal those of the cached path."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common.errors import CacheError
from videoprobe.probe import ProbeConfig, run_probes, write_probe_report

torch.set_num_threads(1)
CLASSES = ["BlueSquare", "MoveLeft", "RedDisc"]
ENC = {"name": "videomae_vit_tiny", "kwargs": {"num_frames": 4, "img_size": 32}}


def _extract(data: Path, out: Path, split: str, tokens: bool) -> None:
    from common.config import from_dict
    from videoprobe.extract import ExtractConfig, extract

    cfg = from_dict(ExtractConfig, {
        "data": {"kind": "synth", "root": str(data), "split": split}, "encoder": ENC,
        "views": {"num_clips": 2, "spatial": "three_crop", "frame_step": 2, "size": 32},
        "save_tokens": tokens, "dtype": "float16", "out": str(out), "progress": False, "fsync": False,
        "device": "cpu"})
    assert not extract(cfg).failures


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    from videoprobe.data.synth import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("vstream")
    data = Path(generate_dataset(root / "synth", SynthConfig(CLASSES, videos_per_class=4, seed=2, frames=12,
                                                              size=32), progress=False))
    for split in ("train", "test"):
        _extract(data, root / "tok" / split, split, True)
    _extract(data, root / "pooled" / "train", "train", False)
    return root, data


def _cfg(root: Path, out: Path, **kw) -> ProbeConfig:
    from common.config import from_dict

    d = {"train_cache": str(root / "tok" / "train"), "test_cache": str(root / "tok" / "test"),
         "out": str(out), "probes": ["linear", "knn", "attentive"], "seeds": [0, 1], "n_boot": 20,
         "progress": False, "encoder_device": "cpu", "knn": {"ks": [3]},
         "linear": {"epochs": 3, "lrs": [0.01, 0.1], "wds": [0.0]},
         "attentive": {"epochs": 2, "batch_size": 8, "num_heads": 0}, **kw}
    return from_dict(ProbeConfig, d)


def test_streamed_equals_cached_for_every_probe_and_seed(caches, tmp_path, monkeypatch, capsys):
    root, _ = caches
    cached = run_probes(_cfg(root, tmp_path / "c"))
    monkeypatch.setenv("PROBESUITE_PROGRESS_SECONDS", "0")  # the streamed pass shows progress, in log lines
    capsys.readouterr()
    streamed = run_probes(_cfg(root, tmp_path / "s", eval_source="stream", test_cache=""))
    n = streamed["num_test_videos"]
    assert f"stream test: {n}/{n} video (100%)" in capsys.readouterr().err
    assert cached["eval_source"] == "cache" and streamed["eval_source"] == "stream"
    assert streamed["num_test_videos"] == cached["num_test_videos"] > 0
    assert streamed["test_class_histogram"] == cached["test_class_histogram"]
    assert streamed["test"]["split"] == "test" and streamed["test"]["feature_config_hash"] == \
        cached["test"]["feature_config_hash"]
    for probe in ("linear", "knn", "attentive"):
        a, b = cached["results"][probe], streamed["results"][probe]
        for m in ("top1", "top5", "mean_class"):  # the cached path's metrics are float32 sums: 1e-5 %
            assert a[m] == pytest.approx(b[m], abs=1e-5), (probe, m)
            assert a["spread"][m]["per_seed"] == pytest.approx(b["spread"][m]["per_seed"], abs=1e-5)
            assert a["spread"][m]["ci"] == pytest.approx(b["spread"][m]["ci"], abs=1e-9)
        assert cached["per_video"][probe] == streamed["per_video"][probe]
    assert len(streamed["results"]["linear"]["spread"]["top1"]["per_seed"]) == 2  # one head per seed
    md, js = write_probe_report(_cfg(root, tmp_path / "s", eval_source="stream", test_cache=""), streamed)
    meta = json.loads(Path(js).read_text())["meta"]
    assert meta["eval_source"] == "stream" and meta["stream"]["failed"] == {}


def test_rank_shards_sum_to_the_whole(caches):
    from videoprobe.probe import fit_probe, load_split, open_stream, stream_scores

    root, _ = caches
    cfg = _cfg(root, Path("unused"), eval_source="stream")
    from common.cache import FeatureCache

    train_cache = FeatureCache(cfg.train_cache)
    train = load_split(cfg.train_cache, None)
    stream = open_stream(cfg, train_cache, train.class_names)
    fits = [("linear", fit_probe("linear", train, cfg.linear, 0, progress=False)),
            ("attentive", fit_probe("attentive", train, cfg.attentive, 0, progress=False))]
    full, fail = stream_scores(stream, fits)
    parts = [stream_scores(stream, fits, rank_=r, world_=2)[0] for r in (0, 1)]
    assert not fail and full.shape == (2, len(stream.items), 3)
    np.testing.assert_array_equal(parts[0] + parts[1], full)
    assert (parts[0][:, 1::2] == 0).all() and (parts[1][:, 0::2] == 0).all()  # strided shards
    # softmax summed per video: linear over its 2 clips x 3 crops, attentive over its 3 crop sequences
    np.testing.assert_allclose(full.sum(-1), [[6.0] * 6, [3.0] * 6], atol=1e-5)


def test_auto_streams_without_a_test_cache_and_token_probe_hint(caches, tmp_path):
    root, _ = caches
    res = run_probes(_cfg(root, tmp_path / "a", eval_source="auto", test_cache=str(tmp_path / "none"),
                          probes=["linear"], seeds=[0]))
    assert res["eval_source"] == "stream" and not (tmp_path / "none").exists()
    pooled = _cfg(root, tmp_path / "p", train_cache=str(root / "pooled" / "train"),
                  probes=["linear", "attentive"], eval_source="stream")
    with pytest.raises(CacheError, match="attentive_online.yaml") as e:
        run_probes(pooled)  # refused before any probe trains, one line, pointing to the online route
    assert "\n" not in str(e.value)


def test_torchrun_two_ranks_same_as_one_process(caches, tmp_path):
    """A real 2-process torchrun (gloo): the test videos are sharded, the scores summed, rank 0 writes the
    report; its per-video predictions equal those of one process."""
    import os
    import socket
    import subprocess
    import sys

    root, _ = caches
    repo = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(repo), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    args = ["probe", f"train_cache={root / 'tok' / 'train'}", "eval_source=stream", "probes=[linear]",
            "linear.epochs=3", "n_boot=10", "progress=false", "encoder_device=cpu"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runs = {"one": [sys.executable, "-m", "videoprobe.cli"],
            "two": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                    "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "videoprobe.cli"]}
    for name, cmd in runs.items():
        proc = subprocess.run([*cmd, *args, f"out={tmp_path / name}"], env=env, cwd=repo, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "per_video.json").read_text())
    b = json.loads((tmp_path / "two" / "per_video.json").read_text())
    assert a == b and len(a["linear"]["pred"][0]) == 6
    meta = json.loads((tmp_path / "two" / "probe.json").read_text())["meta"]
    assert meta["eval_source"] == "stream" and meta["stream"]["world_size"] == 2


def test_a_test_video_that_fails_to_decode_is_left_out_and_named(caches, tmp_path):
    import shutil

    root, data = caches
    moved = tmp_path / "synth"
    shutil.copytree(data, moved)
    first = (moved / "splits" / "testlist01.txt").read_text().split()[0]
    (moved / "videos" / first).write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(300))  # not a video
    res = run_probes(_cfg(root, tmp_path / "b", eval_source="stream", data_root=str(moved), probes=["linear"],
                          seeds=[0]))
    assert res["num_test_videos"] == len(res["per_video"]["linear"]["labels"]) == 5
    bad = Path(first).stem
    assert list(res["stream"]["failed"]) == [bad]
    assert any(n.startswith(f"test video {bad} not evaluated") for n in res["notes"])
