"""SparseUNet: CPU forward/backward, eval mode, shapes, inverse maps, permutation invariance, save/load."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from common.errors import CheckpointError

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from pointprobe.models.sparseunet import (
        SparseUNet,
        create_sparseunet,
        load_sparseunet,
        offset_to_batch,
        save_sparseunet,
        upcast,
    )

SMALL = dict(channels=(8, 16, 24, 32), depths=(1, 1, 1, 1))


def _surface_scene(seed: int, n: int = 1500, grid: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """Points on a floor and two walls, one point per 2 cm voxel."""
    rng = np.random.default_rng(seed)
    k = n // 3
    floor = np.c_[rng.random((k, 2)) * 1.0, np.zeros(k)]
    wall1 = np.c_[np.zeros(k), rng.random(k), rng.random(k) * 0.6]
    wall2 = np.c_[rng.random(k), np.ones(k), rng.random(k) * 0.6]
    c = np.concatenate([floor, wall1, wall2]).astype(np.float32)
    g = np.floor((c - c.min(0)) / grid).astype(np.int64)
    _, first = np.unique(g, axis=0, return_index=True)
    first = np.sort(first)
    return c[first], g[first]


def _batch(seeds=(0, 1), with_mask: bool = False) -> dict:
    coords, grids, feats, offs, masks = [], [], [], [], []
    for s in seeds:
        c, g = _surface_scene(s)
        coords.append(c)
        grids.append(g)
        feats.append(np.random.default_rng(100 + s).normal(size=(len(c), 9)).astype(np.float32))
        offs.append(len(c))
        masks.append(c[:, 0] < 0.3)
    b = {
        "coord": torch.from_numpy(np.concatenate(coords)),
        "grid_coord": torch.from_numpy(np.concatenate(grids)),
        "feat": torch.from_numpy(np.concatenate(feats)),
        "offset": torch.tensor(np.cumsum(offs)),
    }
    if with_mask:
        b["mask"] = torch.from_numpy(np.concatenate(masks))
    return b


def test_forward_backward_shapes_cpu():
    torch.manual_seed(0)
    model = SparseUNet(**SMALL, drop_path=0.1)
    b = _batch()
    out = model(b)
    assert out.num_levels == 4
    assert [f.shape[1] for f in out.feats] == [8, 16, 24, 32]
    assert out.feats[0].shape[0] == b["feat"].shape[0]
    sizes = [f.shape[0] for f in out.feats]
    assert all(sizes[i] > sizes[i + 1] for i in range(3))
    feat = upcast(out)
    assert feat.shape == (b["feat"].shape[0], 8 + 16 + 24 + 32) == (len(b["feat"]), model.upcast_channels())
    feat.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_eval_mode_runs_on_cpu_and_is_deterministic():
    torch.manual_seed(0)
    model = SparseUNet(**SMALL, norm="bn").eval()  # bias-free convs: spconv's CPU eval path must not fail
    b = _batch()
    with torch.no_grad():
        a = model.encode(b)
        c = model.encode(b)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, c, rtol=0, atol=0)


def test_inverse_maps_match_floor_division():
    model = SparseUNet(**SMALL)
    b = _batch()
    out = model(b)
    # reference: level-l voxel of each input point = grid // 2**l (per sample); the up-cast chain of
    # inverses must send points with the same (sample, grid // 2**l) to the same level-l row
    batch = offset_to_batch(b["offset"]).numpy()
    g = b["grid_coord"].numpy()
    idx = np.arange(len(g))
    for lvl in range(1, 4):
        idx = out.inverses[lvl].numpy()[idx]
        key = np.c_[batch, g // (2 ** lvl)]
        _, ref = np.unique(key, axis=0, return_inverse=True)
        # same partition: a bijection between ref ids and idx ids
        pairs = np.unique(np.c_[ref.ravel(), idx], axis=0)
        assert len(pairs) == len(np.unique(ref)) == len(np.unique(idx)) == out.feats[lvl].shape[0]
        assert np.array_equal(out.batch[lvl].numpy()[idx], batch)


def test_upcast_permutation_invariant():
    torch.manual_seed(0)
    model = SparseUNet(**SMALL).eval()
    b = _batch(seeds=(3,))
    n = len(b["feat"])
    perm = torch.from_numpy(np.random.default_rng(0).permutation(n))
    bp = {k: (v[perm] if k != "offset" else v) for k, v in b.items()}
    with torch.no_grad():
        f = model.encode(b)
        fp = model.encode(bp)
    torch.testing.assert_close(fp, f[perm], rtol=1e-4, atol=1e-5)


def test_mask_token_replaces_masked_points_only_locally():
    torch.manual_seed(0)
    model = SparseUNet(**SMALL, mask_token=True).eval()
    b = _batch(seeds=(0,), with_mask=True)
    b_nomask = {k: v for k, v in b.items() if k != "mask"}
    with torch.no_grad():
        fm = model(b).feats[0]
        f0 = model(b_nomask).feats[0]
        b2 = dict(b, feat=b["feat"].clone())
        b2["feat"][b["mask"]] += 5.0  # masked inputs are invisible to the masked forward
        fm2 = model(b2).feats[0]
    m = b["mask"]
    assert m.any() and (~m).any()
    assert not torch.allclose(fm[m], f0[m])
    torch.testing.assert_close(fm, fm2, rtol=1e-5, atol=1e-6)


def test_decoder_output_and_batch_split():
    torch.manual_seed(0)
    model = SparseUNet(**SMALL, decoder_channels=(16, 12, 8), decoder_depths=(1, 1, 1)).eval()
    b = _batch()
    with torch.no_grad():
        out = model(b)
        assert out.decoded.shape == (len(b["feat"]), 8)
        # a sample's features do not depend on the other samples of the batch
        n0 = int(b["offset"][0])
        single = {k: (v[:n0] if k != "offset" else v[:1]) for k, v in b.items()}
        f_single = model.encode(single)
        f_batch = model.encode(b)[:n0]
    torch.testing.assert_close(f_batch, f_single, rtol=1e-4, atol=1e-5)


def test_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = create_sparseunet(**SMALL, mask_token=True).eval()
    path = save_sparseunet(model, tmp_path / "enc.pth")
    raw = torch.load(path, weights_only=True)
    assert raw["arch"] == "sparseunet" and set(raw) == {"config", "state_dict", "arch"}
    loaded = load_sparseunet(path).eval()
    b = _batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(b), model.encode(b), rtol=0, atol=0)
    with pytest.raises(CheckpointError):
        load_sparseunet(tmp_path / "missing.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pth"):
        load_sparseunet(tmp_path / "bad.pth")
    raw["state_dict"].pop("stem.0.weight")
    with pytest.raises(CheckpointError, match="mismatch"):
        load_sparseunet(raw)
    with pytest.raises(ValueError):
        create_sparseunet(channels=(8,), depths=(1,), bogus=1)
