"""PTv3 bookkeeping against a slow reference of the Sonata release's rule, over hundreds of sizes.

The reference below re-implements, with plain loops, what the release does between the layers (its
behaviour, not its code): serialization (code = batch << 3*depth | Morton code, depth =
bit_length(max grid coord + 1), points sorted by code), patch attention with the release's padding
(K = min(patch size, smallest sample) without flash-attn, K = min(patch size, sample) per sample with
it; a sample longer than K is padded to a multiple of K by repeating the points that precede its last
partial patch; every point reads its output from its own slot), and grid pooling (children grouped by
(batch, grid_coord // 2) in sorted order, max of the projected features). The layers themselves
(linear, norms, the sparse convolution) are the model's own modules. Any difference in sorting,
padding, pooling or the inverse maps shows as a feature difference.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pointprobe.models import PointBatch, create_encoder

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # spconv's torch.cuda.amp decorators


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster (and much faster on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def morton(x: int, y: int, z: int, depth: int) -> int:
    code = 0
    for i in range(depth):
        code |= ((x >> i) & 1) << (3 * i + 2) | ((y >> i) & 1) << (3 * i + 1) | ((z >> i) & 1) << (3 * i)
    return code


def ref_order(gc: list[tuple[int, int, int]], batch: list[int], order: str) -> list[int]:
    """Rows sorted by the release's serialization code (codes are unique: one row per voxel)."""
    depth = (max(max(g) for g in gc) + 1).bit_length()
    swap = order.endswith("-trans")
    codes = [b << (3 * depth) | (morton(g[1], g[0], g[2], depth) if swap else morton(*g, depth))
             for g, b in zip(gc, batch)]
    assert len(set(codes)) == len(codes)
    return sorted(range(len(gc)), key=codes.__getitem__)


def ref_patches(counts: list[int], patch_size: int, per_sample: bool) -> list[tuple[list[int], list[int]]]:
    """The release's padded sequence, as (padded positions -> sorted position, sequence lengths) per
    sample; ``unpad`` is implied: sorted position p of a sample reads padded slot p of that sample."""
    k_all = min(min(counts), patch_size)
    out = []
    for n in counts:
        k = min(n, patch_size) if per_sample else k_all
        if n <= k:
            out.append((list(range(n)), [n]))
            continue
        padded = -(-n // k) * k
        pad = list(range(padded))
        if padded != n:
            r = n % k
            for i in range(padded - k + r, padded):
                pad[i] = i - k  # the slot one patch earlier
        out.append((pad, [k] * (padded // k)))
    return out


def ref_attention(attn, feat: torch.Tensor, order: list[int], counts: list[int], per_sample: bool
                  ) -> torch.Tensor:
    qkv = attn.qkv(feat)
    h, c = attn.num_heads, attn.channels
    out = torch.empty_like(feat)
    start = 0
    for n, (pad, lens) in zip(counts, ref_patches(counts, attn.patch_size, per_sample)):
        rows = [order[start + p] for p in pad]  # padded slot -> input row
        slot_out = []
        s = 0
        for k in lens:
            q, kk, v = qkv[rows[s:s + k]].view(k, 3, h, c // h).permute(1, 2, 0, 3)
            w = torch.softmax(q @ kk.transpose(-1, -2) * attn.scale, dim=-1)
            slot_out.append((w @ v).transpose(0, 1).reshape(k, c))
            s += k
        slot_out = torch.cat(slot_out)
        for p in range(n):  # unpad: sorted position p reads its own slot
            out[order[start + p]] = slot_out[p]
        start += n
    return attn.proj(out)


def ref_pool(down, gc, batch, feat):
    keys = [(b, g[0] // down.stride, g[1] // down.stride, g[2] // down.stride) for g, b in zip(gc, batch)]
    uniq = sorted(set(keys))
    index = {k: i for i, k in enumerate(uniq)}
    cluster = torch.tensor([index[k] for k in keys])
    proj = down.proj(feat)
    pooled = torch.full((len(uniq), proj.shape[1]), -torch.inf).scatter_reduce(
        0, cluster[:, None].expand_as(proj), proj, "amax")
    pooled = down.act(down.norm(pooled))
    return [k[1:] for k in uniq], [k[0] for k in uniq], pooled, cluster


def ref_encode(model, gc: torch.Tensor, batch: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
    """Up-cast features (all levels concatenated) of the release's rule with the model's layers."""
    import spconv.pytorch as spconv

    per_sample = model.config["enable_flash"]
    gcl = [tuple(g) for g in gc.tolist()]
    bl = batch.tolist()
    x = model.embedding(feat)
    feats, inverses = [], []
    for s, stage in enumerate(model.enc.values()):
        if s > 0:
            gcl, bl, x, cluster = ref_pool(stage.down, gcl, bl, x)
            inverses.append(cluster)
        counts = np.bincount(bl).tolist()
        orders = [ref_order(gcl, bl, o) for o in model.order]
        idx = torch.tensor([[b, *g] for g, b in zip(gcl, bl)], dtype=torch.int32)
        shape = (torch.tensor(gcl).max(0).values + 96).tolist()
        sp = spconv.SparseConvTensor(x, idx, shape, len(counts))
        for block in stage.blocks():
            sp = block.cpe[0](sp.replace_feature(x))  # neighbour pairs computed once per level
            x = x + block.cpe[2](block.cpe[1](sp.features))
            order = orders[block.attn.order_index]
            x = x + ref_attention(block.attn, block.norm1(x), order, counts, per_sample)
            x = x + block.mlp(block.norm2(x))
        feats.append(x)
    out = feats[-1]
    for f, inv in zip(reversed(feats[:-1]), reversed(inverses)):
        out = torch.cat([f, out[inv]], 1)
    return out


def sample_voxels(n: int, rng: np.random.Generator, side: int) -> np.ndarray:
    """n distinct voxels, mostly on two perpendicular planes (as in a room) so pooling halves unevenly."""
    cells = set()
    while len(cells) < n:
        a, b = rng.integers(0, side, 2)
        t = rng.integers(0, 3)
        cells.add((int(a), int(b), int(t)) if rng.random() < 0.6 else (int(a), int(t), int(b)))
    return np.array(sorted(cells, key=lambda _: rng.random()), dtype=np.int64)


def model_for(patch: list[int], enable_flash: bool):
    torch.manual_seed(0)
    model = create_encoder("ptv3_tiny", enc_patch_size=patch, order=["z", "z-trans"],
                           enable_flash=enable_flash).eval()
    with torch.no_grad():  # biases and norms away from their initial values: every slot counts
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def check(model, counts: list[int], rng: np.random.Generator) -> float:
    gcs = [sample_voxels(n, rng, side=int(2 * np.sqrt(n)) + 4) for n in counts]
    gc = torch.from_numpy(np.concatenate(gcs))
    batch = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    feat = torch.randn(len(gc), 9)
    point = PointBatch.create(gc.float() * 0.02, gc, feat, batch=batch)
    with torch.no_grad():
        ours = model.encode(point)
        ref = ref_encode(model, gc, batch, feat)
    return float((ours - ref).abs().max())


def test_reference_padding_keeps_the_last_k_points():
    # the reference's padded last patch is the set of the last K sorted points of the sample
    for n, k in [(40, 16), (33, 16), (17, 16), (48, 16), (5, 16), (100, 7)]:
        (pad, lens), = ref_patches([n], k, per_sample=True)
        if n > k:
            assert sorted(pad[-k:]) == list(range(n - k, n)) and len(pad) % k == 0
        else:
            assert pad == list(range(n)) and lens == [n]


@pytest.mark.parametrize("patch", [[16, 16, 16], [24, 20, 16], [64, 32, 16]])
def test_single_scene_sizes_match_release_rule(patch):
    """~100 sizes per patch setting: at every level several multiples of the patch, off-by-one sizes,
    and levels with fewer points than one patch."""
    model = model_for(patch, enable_flash=True)
    rng = np.random.default_rng(sum(patch))
    k = patch[0]
    sizes = sorted({*range(2, 3 * k, max(1, k // 8)), *(m * k + d for m in range(1, 11) for d in (-1, 0, 1)),
                    *rng.integers(3 * k, 20 * k, 15).tolist()})
    worst = {n: check(model, [n], rng) for n in sizes}
    bad = {n: d for n, d in worst.items() if d > 1e-4}
    assert len(sizes) > 55 and not bad, f"sizes diverging from the release rule: {bad}"


@pytest.mark.parametrize("enable_flash", [True, False])
def test_batches_match_release_rule(enable_flash):
    """Batches of 2-3 scenes: without flash-attn one K for the whole batch (its smallest sample)."""
    model = model_for([32, 24, 16], enable_flash=enable_flash)
    rng = np.random.default_rng(7 + enable_flash)
    bad = {}
    for _ in range(30):
        counts = rng.integers(3, 300, rng.integers(2, 4)).tolist()
        d = check(model, counts, rng)
        if d > 1e-4:
            bad[tuple(counts)] = d
    assert not bad, f"batches diverging from the release rule: {bad}"


@pytest.mark.slow
def test_real_config_scale_matches_release_rule():
    """Patch size 1024 and the Sonata orders' bookkeeping (z orders: the reference codes) on two sizes
    around one patch multiple, channels kept tiny."""
    torch.manual_seed(0)
    model = create_encoder("ptv3_tiny", enc_patch_size=[1024] * 3, order=["z", "z-trans"]).eval()
    rng = np.random.default_rng(3)
    for n in (2049, 3100):
        assert check(model, [n], rng) < 1e-4
