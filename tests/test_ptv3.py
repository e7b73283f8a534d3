"""PTv3 encoder: release layout, patch rule, attention, up-casting, invariances, encode_points."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from common.errors import ConfigError, InputError
from common.sampling import grid_sample
from pointprobe.models import ENCODERS, PointBatch, create_encoder, encode_points, upcast
from pointprobe.models.encode import center_shift, spatial_chunks
from pointprobe.models.ptv3 import count_parameters, patch_plan
from pointprobe.models.serialization import serialize

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # spconv's torch.cuda.amp decorators


def room(n: int, seed: int = 0, size=(3.0, 2.5, 2.0)):
    """Points on the surfaces of a small room (floor, two walls, a box): xyz, rgb in [0, 255], normals."""
    rng = np.random.default_rng(seed)
    w, d, h = size
    bx, by = rng.uniform(0.5, w - 1.0), rng.uniform(0.5, d - 1.0)
    planes = [  # origin, u, v, normal, colour
        ((0, 0, 0), (w, 0, 0), (0, d, 0), (0, 0, 1), (150, 120, 90)),
        ((0, 0, 0), (w, 0, 0), (0, 0, h), (0, 1, 0), (200, 200, 190)),
        ((0, 0, 0), (0, d, 0), (0, 0, h), (1, 0, 0), (190, 200, 210)),
        ((bx, by, 0.6), (0.5, 0, 0), (0, 0.5, 0), (0, 0, 1), (40, 90, 200)),
        ((bx, by, 0), (0.5, 0, 0), (0, 0, 0.6), (0, -1, 0), (40, 90, 200)),
    ]
    area = np.array([np.linalg.norm(np.cross(p[1], p[2])) for p in planes])
    k = rng.choice(len(planes), size=n, p=area / area.sum())
    o, u, v, nrm, col = (np.array([p[i] for p in planes], dtype=float)[k] for i in range(5))
    st = rng.uniform(size=(n, 2))
    xyz = o + st[:, :1] * u + st[:, 1:] * v + rng.normal(scale=0.002, size=(n, 3))
    rgb = np.clip(col + rng.normal(scale=8, size=(n, 3)), 0, 255)
    return xyz, rgb, nrm


def point_batch(n: int, seed: int = 0, grid: float = 0.04, in_channels: int = 9) -> PointBatch:
    xyz, rgb, nrm = room(n, seed)
    xyz = center_shift(xyz)
    gc = np.floor((xyz - xyz.min(0)) / grid).astype(np.int64)
    _, keep = np.unique(gc, axis=0, return_index=True)
    feat = np.concatenate([xyz, rgb / 255, nrm], 1)[keep, :in_channels]
    return PointBatch.create(torch.tensor(xyz[keep], dtype=torch.float32), torch.tensor(gc[keep]),
                             torch.tensor(feat, dtype=torch.float32))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_encoder("ptv3_tiny").eval()


# ---------------------------------------------------------------------------------------------------
# layout
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,tensors,scalars", [("sonata", 453, 108_461_376),
                                                  ("sonata_small", 273, 38_648_992)])
def test_release_parameter_counts(name, tensors, scalars):
    with torch.device("meta"):
        model = create_encoder(name)
    assert count_parameters(model) == (tensors, scalars)
    assert len(model.state_dict()) == tensors


def test_release_key_names_and_shapes():
    with torch.device("meta"):
        sd = create_encoder("sonata").state_dict()
    expected = {
        "embedding.stem.linear.weight": (48, 9), "embedding.stem.norm.bias": (48,),
        "embedding.mask_token": (1, 48),
        "enc.enc1.down.proj.weight": (96, 48), "enc.enc1.down.norm.0.weight": (96,),
        "enc.enc0.block0.cpe.0.weight": (48, 3, 3, 3, 48), "enc.enc0.block0.cpe.0.bias": (48,),
        "enc.enc0.block0.cpe.1.weight": (48, 48), "enc.enc0.block0.cpe.2.bias": (48,),
        "enc.enc3.block11.norm1.0.weight": (384,), "enc.enc3.block11.attn.qkv.weight": (1152, 384),
        "enc.enc3.block11.attn.qkv.bias": (1152,), "enc.enc4.block2.attn.proj.weight": (512, 512),
        "enc.enc4.block2.norm2.0.bias": (512,), "enc.enc4.block2.mlp.0.fc1.weight": (2048, 512),
        "enc.enc4.block2.mlp.0.fc2.weight": (512, 2048),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any(k.startswith("dec") or "enc0.down" in k for k in sd)
    prefixes = {k.split(".")[0] for k in sd}
    assert prefixes == {"embedding", "enc"}


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown config key.*'enc_dpeths'"):
        create_encoder("ptv3_tiny", enc_dpeths=[1, 1, 1])
    with pytest.raises(ConfigError, match="enc_mode=False"):
        create_encoder("ptv3_tiny", enc_mode=False)
    with pytest.raises(ConfigError, match="stride"):
        create_encoder("ptv3_tiny", stride=[2, 2, 2])
    with pytest.raises(ConfigError, match="order"):
        create_encoder("ptv3_tiny", order=["z", "peano"])
    with pytest.raises(ConfigError, match="unknown encoder"):
        create_encoder("pointnet")
    # keys of the release constructor that change nothing here are accepted
    model = create_encoder("ptv3_tiny", traceable=False, dec_depths=[2, 2], freeze_encoder=True)
    assert not any(p.requires_grad for p in model.parameters())
    assert {"ptv3", "sonata", "sonata_small", "ptv3_tiny"} <= set(ENCODERS)


# ---------------------------------------------------------------------------------------------------
# patches and attention
# ---------------------------------------------------------------------------------------------------


def release_patches(counts: list[int], patch_size: int, per_sample: bool) -> list[list[int]]:
    """The release's pad / unpad rule written out with loops: patch (as sorted positions) of every
    sorted position."""
    k_all = min(min(counts), patch_size)
    out: list[list[int]] = []
    start = 0
    for n in counts:
        k = min(n, patch_size) if per_sample else k_all
        padded = -(-n // k) * k if n > k else n
        pad = list(range(padded))
        r = n % k
        if padded != n:  # last patch completed with points of the previous patch
            for i in range(padded - k + r, padded):
                pad[i] = pad[i - k]
        chunks = [pad[i:i + k] for i in range(0, padded, k)] if n > k else [pad]
        for local in range(n):
            chunk = chunks[local // k] if n > k else chunks[0]
            out.append(sorted(start + p for p in chunk))
        start += n
    return out


@pytest.mark.parametrize("per_sample", [True, False])
def test_patch_plan_matches_release_padding_rule(per_sample):
    counts = [150, 37, 64, 90]
    n = sum(counts)
    gen = torch.Generator().manual_seed(0)
    grid = torch.randint(0, 40, (n, 3), generator=gen)
    batch = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    point = PointBatch.create(grid.float(), grid, torch.zeros(n, 1), batch=batch)
    point.serialization = serialize(point.grid_coord, point.batch, ["hilbert", "z"])
    for order_index in (0, 1):
        plan = patch_plan(point, order_index, 32, per_sample)
        flat = torch.cat([g.reshape(-1) for g in plan.gathers])
        assert torch.equal(flat[plan.src], torch.arange(n)), "each row's output slot is its own query"
        patch_of_flat = []
        for g in plan.gathers:
            for row in g.tolist():
                patch_of_flat += [sorted(row)] * len(row)
        order = point.serialization.order[order_index]
        inverse = point.serialization.inverse[order_index]
        ref = release_patches(counts, 32, per_sample)
        for r in range(n):
            expected_rows = sorted(order[ref[int(inverse[r])]].tolist())
            assert patch_of_flat[int(plan.src[r])] == expected_rows


def test_attention_matches_naive_per_patch_softmax():
    torch.manual_seed(0)
    model = create_encoder("ptv3_tiny", enc_patch_size=[24, 24, 24]).eval()
    attn = model.enc.enc0.block0.attn
    point = point_batch(3000, seed=1)
    point.serialization = serialize(point.grid_coord, point.batch, model.order)
    feat = torch.randn(len(point), 16)
    with torch.no_grad():
        out = attn(feat, point)
        plan = patch_plan(point, attn.order_index, attn.patch_size, per_sample=True)
        flat = torch.cat([g.reshape(-1) for g in plan.gathers])
        k = plan.gathers[0].shape[1]
        qkv = attn.qkv(feat).view(len(point), 3, attn.num_heads, -1)
        ref = torch.empty(len(point), 16)
        for r in range(0, len(point), 7):  # every 7th row: enough and fast
            slot = int(plan.src[r])
            rows = flat[slot - slot % k: slot - slot % k + k]
            q, kk, v = qkv[r, 0], qkv[rows, 1], qkv[rows, 2]  # (H, d), (K, H, d), (K, H, d)
            w = torch.softmax(torch.einsum("hd,khd->hk", q, kk) * attn.scale, dim=-1)
            ref[r] = attn.proj(torch.einsum("hk,khd->hd", w, v).reshape(-1))
        rows = torch.arange(0, len(point), 7)
        assert torch.allclose(out[rows], ref[rows], atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# forward, up-casting, invariances
# ---------------------------------------------------------------------------------------------------


def test_forward_levels_and_upcast(tiny):
    point = point_batch(6000)
    with torch.no_grad():
        out = tiny(point)
    levels = out.levels()
    assert [lv.feat.shape[1] for lv in levels] == [16, 32, 64]
    assert len(levels[0]) == len(point) and len(levels[1]) < len(point)
    # pooling: every fine row maps to the coarse voxel grid_coord // 2 of its own sample
    for fine, coarse in zip(levels[:-1], levels[1:]):
        assert torch.equal(coarse.grid_coord[coarse.pooling_inverse], fine.grid_coord // 2)
        mean = torch.zeros(len(coarse), 3).index_add_(0, coarse.pooling_inverse, fine.coord)
        mean /= torch.bincount(coarse.pooling_inverse)[:, None]
        assert torch.allclose(coarse.coord, mean, atol=1e-5)
    l0, l1, l2 = levels
    full = upcast(out).feat
    manual = torch.cat([l0.feat, torch.cat([l1.feat, l2.feat[l2.pooling_inverse]], 1)[l1.pooling_inverse]], 1)
    assert full.shape == (len(point), 112) == (len(point), tiny.feature_dim())
    assert torch.equal(full, manual)
    one = upcast(out, 1).feat  # concatenate one step, then copy down
    assert one.shape[1] == tiny.feature_dim(1) == 96
    assert torch.equal(one, torch.cat([l1.feat, l2.feat[l2.pooling_inverse]], 1)[l1.pooling_inverse])
    mid = upcast(out, 1, steps=1).feat  # stop at the level reached
    assert mid.shape == (len(l1), 96)
    assert torch.equal(upcast(out, 0).feat, l2.feat[l2.pooling_inverse][l1.pooling_inverse])
    with pytest.raises(ConfigError):
        upcast(out, 3)
    # the input batch is not modified by forward
    assert point.parent is None and point.serialization is None and point.feat.shape[1] == 9


def test_eval_is_deterministic_and_train_shuffle_changes_output(tiny):
    point = point_batch(4000, seed=3)
    with torch.no_grad():
        a, b = tiny.encode(point), tiny.encode(point)
        assert torch.equal(a, b)
        assert tiny.shuffle_orders  # set in the config, yet inference does not shuffle
        tiny.train()
        try:
            outs = [tiny.encode(point) for _ in range(4)]
        finally:
            tiny.eval()
    assert any(not torch.allclose(o, a, atol=1e-4) for o in outs)


def test_batch_of_scenes_equals_scenes_alone(tiny):
    p1, p2 = point_batch(4000, seed=4), point_batch(2500, seed=5)
    both = PointBatch.create(torch.cat([p1.coord, p2.coord]), torch.cat([p1.grid_coord, p2.grid_coord]),
                             torch.cat([p1.feat, p2.feat]), offset=torch.tensor([len(p1), len(p1) + len(p2)]))
    # the serialization depth is shared by the batch; equal extents keep it equal to the scenes' own
    assert p1.grid_coord.max().item().bit_length() == p2.grid_coord.max().item().bit_length()
    with torch.no_grad():
        f = tiny.encode(both)
        f1, f2 = tiny.encode(p1), tiny.encode(p2)
    assert torch.allclose(f[: len(p1)], f1, atol=1e-5)
    assert torch.allclose(f[len(p1):], f2, atol=1e-5)


def test_input_validation(tiny):
    point = point_batch(500)
    with pytest.raises(InputError, match="9"):
        tiny(PointBatch.create(point.coord, point.grid_coord, point.feat[:, :6]))
    with pytest.raises(InputError, match="offset"):
        PointBatch.create(point.coord, point.grid_coord, point.feat, offset=torch.tensor([10, 5]))
    bad = point.coord.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        PointBatch.create(bad, point.grid_coord, point.feat)
    with pytest.raises(ConfigError, match="mask token"):
        masked = torch.ones(len(point), dtype=torch.bool)
        create_encoder("ptv3_tiny", mask_token=False)(
            PointBatch.create(point.coord, point.grid_coord, point.feat, mask=masked))


def test_cpu_forward_backward_with_mask_token():
    torch.manual_seed(1)
    model = create_encoder("ptv3_tiny", drop_path=0.1).train()
    xyz, rgb, nrm = room(50_000, seed=6)
    xyz = center_shift(xyz)
    gc = np.floor((xyz - xyz.min(0)) / 0.02).astype(np.int64)
    _, keep = np.unique(gc, axis=0, return_index=True)
    feat = np.concatenate([xyz, rgb / 255, nrm], 1)[keep]
    mask = torch.rand(len(keep)) < 0.3
    point = PointBatch.create(torch.tensor(xyz[keep], dtype=torch.float32), torch.tensor(gc[keep]),
                              torch.tensor(feat, dtype=torch.float32), mask=mask)
    out = model.encode(point)
    assert out.shape == (len(keep), 112) and torch.isfinite(out).all()
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.slow
def test_sonata_small_forward_backward_cpu():
    torch.manual_seed(2)
    model = create_encoder("sonata_small").train()
    point = point_batch(20_000, seed=7, grid=0.02)
    feat = model.encode(point)
    assert feat.shape == (len(point), 992)
    feat.mean().backward()
    for name, p in model.named_parameters():
        if name != "embedding.mask_token":  # no mask given: the token is unused
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_cpe_conv_runs_in_eval_mode_on_cpu_and_adds_bias():
    torch.manual_seed(3)
    model = create_encoder("ptv3_tiny").eval()
    conv = model.enc.enc0.block0.cpe[0]
    with torch.no_grad():
        conv.bias.normal_()
        point = point_batch(800)
        import spconv.pytorch as spconv

        idx = torch.cat([point.batch[:, None], point.grid_coord], 1).int()
        x = spconv.SparseConvTensor(torch.randn(len(point), 16), idx, [200, 200, 200], 1)
        with_bias = conv(x).features
        bias, conv.bias = conv.bias, None
        try:
            without = conv(spconv.SparseConvTensor(x.features, idx, [200, 200, 200], 1)).features
        finally:
            conv.bias = bias
    assert torch.allclose(with_bias, without + bias, atol=1e-6)
    # a point alone in its 3x3x3 neighbourhood sees only the kernel centre
    lone = spconv.SparseConvTensor(torch.ones(1, 16), torch.zeros(1, 4, dtype=torch.int32), [5, 5, 5], 1)
    with torch.no_grad():
        y = conv(lone).features
    assert torch.allclose(y[0], conv.weight[:, 1, 1, 1, :].sum(1) + bias, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# encode_points
# ---------------------------------------------------------------------------------------------------


def test_encode_points_is_invariant_to_input_order(tiny):
    xyz, rgb, nrm = room(20_000, seed=8)
    f = encode_points(tiny, xyz, rgb, nrm, grid_size=0.03)
    perm = np.random.default_rng(0).permutation(len(xyz))
    g = encode_points(tiny, xyz[perm], rgb[perm], nrm[perm], grid_size=0.03)
    assert f.shape == (20_000, 112) and f.dtype == torch.float32
    assert torch.allclose(g, f[perm], atol=1e-5)
    # points of one voxel (the release's: borders at multiples of the grid after the centre shift)
    # share one feature row
    gc = np.floor(center_shift(xyz) / 0.03).astype(np.int64)
    _, inv = np.unique(gc, axis=0, return_inverse=True)
    first = np.unique(inv, return_index=True)[1]
    assert torch.equal(f, f[first[inv.ravel()]])


def test_encode_points_preprocessing_matches_manual_pipeline(tiny):
    xyz, rgb, nrm = room(5000, seed=9)
    xyz = xyz + np.array([10.0, -4.0, 2.0])  # CenterShift must undo any translation
    f = encode_points(tiny, xyz, rgb, nrm, grid_size=0.04, sampling="first")
    lo, hi = xyz.min(0), xyz.max(0)
    shifted = xyz - np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]])
    gc = np.floor(shifted / 0.04).astype(np.int64)  # the release's GridSample (the default, "world")
    gc -= gc.min(0)
    _, first, inv = np.unique(gc, axis=0, return_index=True, return_inverse=True)
    feat = np.concatenate([shifted, rgb / 255, nrm], 1)[first]
    point = PointBatch.create(torch.tensor(shifted[first], dtype=torch.float32), torch.tensor(gc[first]),
                              torch.tensor(feat, dtype=torch.float32))
    with torch.no_grad():
        ref = tiny.encode(point)[torch.from_numpy(inv.ravel())]
    assert torch.allclose(f, ref, atol=1e-5)


def test_encode_points_missing_inputs_and_errors(tiny):
    xyz, rgb, _ = room(3000, seed=10)
    with pytest.warns(UserWarning, match="normal"):
        f = encode_points(tiny, xyz, rgb, grid_size=0.04, source="scene0")
    assert torch.isfinite(f).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encode_points(create_encoder("ptv3_tiny", in_channels=3).eval(), xyz, grid_size=0.04)
    bad = xyz.copy()
    bad[7, 2] = np.nan
    with pytest.raises(InputError, match="scene0.*NaN"):
        encode_points(tiny, bad, rgb, source="scene0")
    with pytest.raises(InputError, match="empty"):
        encode_points(tiny, np.zeros((0, 3)), source="scene0")
    with pytest.raises(InputError, match="color"):
        encode_points(tiny, xyz, rgb[:10])


def test_encode_points_test_mode_and_levels(tiny):
    xyz, rgb, nrm = room(4000, seed=11)
    f = encode_points(tiny, xyz, rgb, nrm, grid_size=0.05, sampling="test", levels=1)
    assert f.shape == (4000, 96) and torch.isfinite(f).all()
    g = encode_points(tiny, xyz, rgb, nrm, grid_size=0.05, sampling="train", seed=3, levels=0)
    assert g.shape == (4000, 64)


def test_chunked_encoding(tiny):
    xyz, rgb, nrm = room(8000, seed=12)
    m = len(grid_sample(center_shift(xyz), 0.03))
    full = encode_points(tiny, xyz, rgb, nrm, grid_size=0.03, max_points=None)
    # chunks whose margin covers the whole room see the whole scene: identical to one pass
    whole = encode_points(tiny, xyz, rgb, nrm, grid_size=0.03, max_points=int(m * 0.6), chunk_margin=10.0)
    assert torch.allclose(whole, full, atol=1e-5)
    small = encode_points(tiny, xyz, rgb, nrm, grid_size=0.03, max_points=m // 3, chunk_margin=0.3)
    assert small.shape == full.shape and torch.isfinite(small).all()
    close = (small - full).abs().max(1).values < 1e-3
    assert 0.05 < close.float().mean() < 1.0  # interior points of some chunks agree, borders differ


def test_spatial_chunks_partition():
    coord = np.random.default_rng(0).uniform(0, 10, (5000, 3)) * np.array([1.0, 0.5, 0.2])
    chunks = spatial_chunks(coord, 1200, 0.5)
    cores = np.concatenate([rows[core] for rows, core in chunks])
    assert np.array_equal(np.sort(cores), np.arange(5000))
    assert max(len(rows) for rows, _ in chunks) <= 1200
    assert len(chunks) >= math.ceil(5000 / 1200)
