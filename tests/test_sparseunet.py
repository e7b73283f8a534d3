"""SparseUNet: CPU forward/backward, eval mode, shapes, inverse maps, permutation invariance, save/load."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from common.errors import CheckpointError, ConfigError

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from pointprobe.models.sparseunet import (
        SparseUNet,
        create_sparseunet,
        load_sparseunet,
        save_sparseunet,
    )
    from pointprobe.models.structure import PointBatch, upcast

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
    levels = out.levels()
    assert len(levels) == 4
    assert [lv.feat.shape[1] for lv in levels] == [8, 16, 24, 32]
    assert levels[0].feat.shape[0] == b["feat"].shape[0]
    sizes = [len(lv) for lv in levels]
    assert all(sizes[i] > sizes[i + 1] for i in range(3))
    feat = upcast(out).feat
    assert feat.shape == (len(b["feat"]), 8 + 16 + 24 + 32) == (len(b["feat"]), model.feature_dim())
    assert model.feature_dim(0) == 32 and model.feature_dim(2) == 16 + 24 + 32
    assert model.encode(b, 2).shape == (len(b["feat"]), 16 + 24 + 32)
    assert upcast(out, steps=2).feat.shape == (sizes[1], 16 + 24 + 32)
    assert upcast(out, 1, steps=3).feat.shape == (sizes[0], 24 + 32)
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
        c = model.encode(PointBatch.from_dict(b))
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, c, rtol=0, atol=0)


def test_levels_match_floor_division_and_mean_coords():
    model = SparseUNet(**SMALL)
    b = _batch()
    out = model(b)
    levels = out.levels()
    # reference: the level-l voxel of each input point is (sample, grid // 2**l); the chain of pooling
    # inverses must send points with the same key to the same level-l row, and different keys apart
    batch = PointBatch.from_dict(b).batch.numpy()
    g = b["grid_coord"].numpy()
    c = b["coord"].numpy().astype(np.float64)
    idx = np.arange(len(g))
    for lvl in range(1, 4):
        idx = levels[lvl].pooling_inverse.numpy()[idx]
        key = np.c_[batch, g // (2 ** lvl)]
        _, ref = np.unique(key, axis=0, return_inverse=True)
        ref = ref.ravel()
        pairs = np.unique(np.c_[ref, idx], axis=0)
        assert len(pairs) == len(np.unique(ref)) == len(np.unique(idx)) == len(levels[lvl])
        assert np.array_equal(levels[lvl].batch.numpy()[idx], batch)
        # rows of a level are grouped by sample (offsets delimit the samples), like PTv3's pooling
        lb = levels[lvl].batch.numpy()
        assert np.all(np.diff(lb) >= 0)
        assert levels[lvl].offset.tolist() == np.cumsum(np.bincount(lb)).tolist()
        assert np.array_equal(levels[lvl].grid_coord.numpy()[idx], g // (2 ** lvl))
        # level coordinates are the mean of their children's coordinates (as PTv3's pooling)
        inv = levels[lvl].pooling_inverse.numpy()
        mean = np.zeros((len(levels[lvl]), 3))
        np.add.at(mean, inv, c)
        mean /= np.bincount(inv, minlength=len(mean))[:, None]
        np.testing.assert_allclose(levels[lvl].coord.numpy(), mean, rtol=1e-5, atol=1e-5)
        c = mean


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


def test_mask_token_hides_masked_inputs():
    torch.manual_seed(0)
    model = SparseUNet(**SMALL, mask_token=True).eval()
    b = _batch(seeds=(0,), with_mask=True)
    b_nomask = {k: v for k, v in b.items() if k != "mask"}
    with torch.no_grad():
        fm = model(b).root().feat
        f0 = model(b_nomask).root().feat
        b2 = dict(b, feat=b["feat"].clone())
        b2["feat"][b["mask"]] += 5.0  # masked inputs are invisible to the masked forward
        fm2 = model(b2).root().feat
    m = b["mask"]
    assert m.any() and (~m).any()
    assert not torch.allclose(fm[m], f0[m])
    torch.testing.assert_close(fm, fm2, rtol=1e-5, atol=1e-6)


def test_seeded_drop_path_depends_on_sample_not_batch():
    torch.manual_seed(0)
    model = SparseUNet(**SMALL, drop_path=0.5).train()
    b = _batch()
    n0 = int(b["offset"][0])
    pb = PointBatch.from_dict(b)
    pb.cache["drop_path_seed"] = torch.tensor([11, 12])
    single = PointBatch.from_dict({k: (v[:n0] if k != "offset" else v[:1]) for k, v in b.items()})
    single.cache["drop_path_seed"] = torch.tensor([11])
    with torch.no_grad():
        torch.manual_seed(1)
        f_batch = upcast(model(pb)).feat[:n0]
        torch.manual_seed(2)  # the global RNG must not matter
        f_single = upcast(model(single)).feat
        pb.cache["drop_path_seed"] = torch.tensor([13, 12])
        f_other = upcast(model(pb)).feat[:n0]
    torch.testing.assert_close(f_batch, f_single, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(f_batch, f_other)


def test_decoder_output_and_batch_split():
    torch.manual_seed(0)
    model = SparseUNet(**SMALL, decoder_channels=(16, 12, 8), decoder_depths=(1, 1, 1)).eval()
    b = _batch()
    with torch.no_grad():
        out = model(b)
        assert out.cache["decoded"].shape == (len(b["feat"]), 8)
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
    assert type(model)(**raw["config"]).config == model.config
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
    with pytest.raises(ConfigError, match="bogus"):
        create_sparseunet(channels=(8,), depths=(1,), bogus=1)
    with pytest.raises(ConfigError):
        create_sparseunet(channels=(8, 16), depths=(1,))


def test_registered_and_loadable_with_load_encoder(tmp_path):
    from pointprobe.models import ENCODERS, encode_points, load_encoder, save_encoder

    torch.manual_seed(0)
    model = ENCODERS["sparseunet"](**SMALL, mask_token=True).eval()
    path = save_encoder(model, tmp_path / "enc.pth", note="test")
    loaded = load_encoder(path)
    assert isinstance(loaded, SparseUNet)
    c, _ = _surface_scene(5)
    rng = np.random.default_rng(0)
    color = rng.integers(0, 255, (len(c), 3))
    normal = rng.normal(size=(len(c), 3))
    f1 = encode_points(model, c, color, normal)
    f2 = encode_points(loaded, c, color, normal)
    assert f1.shape == (len(c), model.feature_dim())
    torch.testing.assert_close(f1, f2, rtol=0, atol=0)


@pytest.mark.parametrize("max_points", [None, 600])  # one pass, and spatial chunks
@pytest.mark.parametrize("sampling", ["canonical", "test"])
def test_encode_points_out_dtype_float16_is_the_float32_result_rounded(max_points, sampling):
    from pointprobe.models import ENCODERS, encode_points

    torch.manual_seed(0)
    model = ENCODERS["sparseunet"](**SMALL).eval()
    c, _ = _surface_scene(6)
    rng = np.random.default_rng(1)
    color, normal = rng.integers(0, 255, (len(c), 3)), rng.normal(size=(len(c), 3))
    kw = dict(max_points=max_points, sampling=sampling)
    f32 = encode_points(model, c, color, normal, **kw)
    f16 = encode_points(model, c, color, normal, out_dtype=torch.float16, **kw)
    assert f32.dtype == torch.float32 and f16.dtype == torch.float16 and f16.shape == f32.shape
    assert torch.equal(f16, f32.to(torch.float16))


def test_encode_points_world_aligned_grid_matches_release_voxelisation():
    """align="world": voxels floor(c / g) - min after the centre shift, as the release's GridSample."""
    from pointprobe.models import ENCODERS, encode_points
    from pointprobe.models.encode import center_shift
    from pointprobe.models.structure import PointBatch

    torch.manual_seed(0)
    model = ENCODERS["sparseunet"](**SMALL).eval()
    c, _ = _surface_scene(7)
    c = c + np.float32(0.013)  # borders of the two alignments differ
    rng = np.random.default_rng(2)
    color, normal = rng.integers(0, 255, (len(c), 3)), rng.normal(size=(len(c), 3)).astype(np.float32)
    xyz = center_shift(c.astype(np.float64)).astype(np.float32)
    vox = np.floor(xyz / 0.02).astype(np.int64)
    vox -= vox.min(0)
    _, first, inverse = np.unique(vox, axis=0, return_index=True, return_inverse=True)
    feat = np.concatenate([xyz, color / 255.0, normal], 1).astype(np.float32)[first]
    batch = PointBatch.create(torch.from_numpy(xyz[first]), torch.from_numpy(vox[first]),
                              torch.from_numpy(feat))
    with torch.inference_mode():
        expected = model.encode(batch, None)[torch.from_numpy(inverse.reshape(-1))]
    world = encode_points(model, c, color, normal, sampling="first", align="world", max_points=None)
    torch.testing.assert_close(world, expected, rtol=1e-5, atol=1e-5)
    default = encode_points(model, c, color, normal, sampling="first", max_points=None)
    assert torch.equal(default, world)  # the release's voxelisation is the default
    old = encode_points(model, c, color, normal, sampling="first", max_points=None, align="min")
    assert not torch.allclose(old, world, atol=1e-3)  # the other origin voxelises differently


def test_canonical_index_equals_one_lexsort_of_every_row():
    """The fast path (only multi-point voxels sorted) picks what a lexsort of all rows picks,
    including among identical rows (the lowest row), and the choice ignores the input order."""
    from pointprobe.models.encode import canonical_index

    rng = np.random.default_rng(0)
    n, m = 5000, 3000
    inverse = np.concatenate([np.arange(m), rng.integers(0, m, n - m)])  # every voxel used; some shared
    rng.shuffle(inverse)
    feat = rng.integers(0, 3, (n, 9)).astype(np.float32)  # few values: ties on leading columns
    feat[10] = feat[11]
    inverse[10] = inverse[11]  # two identical rows in one voxel
    keys = [feat[:, j] for j in range(8, -1, -1)] + [inverse]
    order = np.lexsort(keys)
    first = np.ones(n, dtype=bool)
    first[1:] = inverse[order[1:]] != inverse[order[:-1]]
    expected = order[first]
    got = canonical_index(inverse, m, feat)
    np.testing.assert_array_equal(got, expected)
    assert got[inverse[10]] == 10  # the lower of two identical rows
    perm = rng.permutation(n)  # another input order chooses the same (voxel, row content)
    got_p = canonical_index(inverse[perm], m, feat[perm])
    np.testing.assert_array_equal(feat[perm][got_p], feat[got])
    with pytest.raises(ValueError, match="cover"):
        canonical_index(inverse, m + 1, feat)
