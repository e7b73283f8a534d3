"""``pointprobe extract`` with ``num_workers`` DataLoader processes reading scenes ahead: the same
cache (items, order, arrays) as reading each scene in the main process; bad scenes still reported;
resumption unchanged."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from common.cache import FeatureCache
from common.errors import ConfigError
from pointprobe.extract import ExtractConfig, PointDataConfig, extract, read_ahead
from pointprobe.models import ENCODERS
from pointprobe.models.registry import PointEncoderConfig
from tools.bench_scale_points import room_scene, write_scene

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("rooms")
    for i in range(5):
        write_scene(root / ("val" if i < 1 else "train") / f"scene{i:04d}_00", room_scene(1200 + 300 * i, i))
    bad = root / "train" / "scene0009_00"  # NaN coordinates: reported, not cached
    write_scene(bad, room_scene(1000, 9))
    coord = np.load(bad / "coord.npy")
    coord[3] = np.nan
    np.save(bad / "coord.npy", coord)
    return root


def _cfg(data, out, encoder: str = "raw", **kw) -> ExtractConfig:
    small = dict(ENCODERS[encoder].smoke_config) if encoder != "raw" else {}
    enc = PointEncoderConfig(name=encoder, config=small)
    return ExtractConfig(data=PointDataConfig(root=str(data)), encoder=enc, out=str(out), device="cpu", **kw)


def _contents(path) -> tuple[list[str], dict]:
    cache = FeatureCache(path)
    return cache.items(), {it: cache.load(it, arrays=None) for it in cache.items()}


def _same_cache(a, b) -> None:
    ia, xa = _contents(a)
    ib, xb = _contents(b)
    assert ia == ib
    for it in ia:
        assert xa[it].keys() == xb[it].keys()
        for k in xa[it]:
            assert xa[it][k].dtype == xb[it][k].dtype and np.array_equal(xa[it][k], xb[it][k]), (it, k)


@pytest.mark.parametrize("encoder, storage", [("raw", {}), ("sparseunet", {"train": "subsample"})])
def test_two_workers_give_the_cache_of_none(data, tmp_path, encoder, storage):
    base = _cfg(data, tmp_path / "w0", encoder, storage=storage, points_per_scene=300)
    two = _cfg(data, tmp_path / "w2", encoder, storage=storage, points_per_scene=300, num_workers=2)
    f0 = extract(base, progress=False)
    f2 = extract(two, progress=False)
    assert f0 == f2 and list(f2["train"]) == ["scene0009_00"] and "NaN" in f2["train"]["scene0009_00"]
    for split in ("train", "val"):
        _same_cache(tmp_path / "w0" / split, tmp_path / "w2" / split)
    m0 = json.loads((tmp_path / "w0" / "train" / "manifest.json").read_text())
    m2 = json.loads((tmp_path / "w2" / "train" / "manifest.json").read_text())
    assert list(m0["items"]) == list(m2["items"])


def test_workers_resume_a_partial_cache(data, tmp_path):
    out = tmp_path / "f"
    extract(_cfg(data, out), progress=False)
    ref_items, _ = _contents(out / "train")
    partial = tmp_path / "p"
    cfg = _cfg(data, partial, num_workers=2)
    cfg.data.limit = 2
    extract(cfg, progress=False)
    assert len(FeatureCache(partial / "train").items()) == 2
    cfg.data.limit = 0
    extract(cfg, progress=False)  # the rest, read ahead by the workers
    _same_cache(out / "train", partial / "train")
    assert FeatureCache(partial / "train").items() == ref_items


def test_num_workers_and_device_preprocess_checked(data, tmp_path):
    with pytest.raises(ConfigError, match="num_workers"):
        extract(_cfg(data, tmp_path / "x", num_workers=-1), progress=False)
    with pytest.raises(ConfigError, match="device_preprocess"):
        extract(_cfg(data, tmp_path / "x", device_preprocess="gpu"), progress=False)
    assert not (tmp_path / "x").exists()
    assert read_ahead(_cfg(data, tmp_path / "x"), "train") is None
