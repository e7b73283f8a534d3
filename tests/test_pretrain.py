"""Sonata-style pre-training: views, pairing, Sinkhorn, loss, EMA, schedules, exact resume, DDP."""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from common.config import load_config
from common.errors import ConfigError

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from pointprobe.models.ptv3 import ptv3_block_layout
    from pointprobe.models.structure import block_index
    from pointprobe.pretrain.config import PretrainConfig
    from pointprobe.pretrain.ema import copy_weights, ema_update
    from pointprobe.pretrain.heads import PrototypeHead
    from pointprobe.pretrain.loss import distill_loss, sinkhorn_knopp
    from pointprobe.pretrain.model import param_groups
    from pointprobe.pretrain.schedules import one_cycle_factor, step_values, warmup_then_constant
    from pointprobe.pretrain.trainer import Pretrainer, run_pretrain
    from pointprobe.pretrain.views import (
        ViewConfig,
        collate_views,
        make_scene_views,
        match_views,
    )

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------ fixtures
def _scene(seed: int, density: float = 900.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A small room: floor, two walls and a few boxes, with colours and normals."""
    rng = np.random.default_rng(seed)
    pts, nrm, col = [], [], []

    def plane(o, u, v, c):
        o, u, v = (np.asarray(a, float) for a in (o, u, v))
        k = int(np.linalg.norm(np.cross(u, v)) * density)
        a = rng.random((k, 2))
        pts.append(o + a[:, :1] * u + a[:, 1:] * v)
        n = np.cross(u, v)
        nrm.append(np.repeat((n / np.linalg.norm(n))[None], k, 0))
        col.append(np.clip(np.asarray(c) + rng.normal(0, 10, (k, 3)), 0, 255))

    w, d = rng.uniform(1.6, 2.2, 2)
    plane((0, 0, 0), (w, 0, 0), (0, d, 0), (150, 120, 90))
    plane((0, 0, 0), (w, 0, 0), (0, 0, 1.2), (200, 200, 190))
    plane((0, 0, 0), (0, d, 0), (0, 0, 1.2), (190, 200, 200))
    for _ in range(2):
        x, y = rng.uniform(0.2, 1.2, 2)
        c = rng.uniform(30, 220, 3)
        plane((x, y, 0.4), (0.4, 0, 0), (0, 0.4, 0), c)
        plane((x, y, 0), (0.4, 0, 0), (0, 0, 0.4), c)
        plane((x, y, 0), (0, 0.4, 0), (0, 0, 0.4), c)
    return (np.concatenate(pts).astype(np.float32), np.concatenate(col).astype(np.uint8),
            np.concatenate(nrm).astype(np.float32))


def _write_dataset(root: Path, n: int, density: float = 900.0) -> Path:
    for i in range(n):
        c, col, nrm = _scene(i, density)
        d = root / "train" / f"scene{i:04d}_00"
        d.mkdir(parents=True)
        np.save(d / "coord.npy", c)
        np.save(d / "color.npy", col)
        np.save(d / "normal.npy", nrm)
    return root


TINY = [
    "model.backbone=sparseunet",
    "model.backbone_config={channels: [8, 16, 16], depths: [1, 1, 1]}",
    "model.upcast_steps=1",
    "model.head_hidden=32",
    "model.head_bottleneck=16",
    "model.num_prototypes=32",
    "model.drop_path=0.2",
    "views.max_points=1200",
    "views.local_views=2",
    "train.log_every=1",
    "train.progress=false",
    "train.prefetch=false",
    "train.save_every=0",
    "optim.lr=0.002",
]


def _cfg(root: Path, *extra: str) -> PretrainConfig:
    return load_config(PretrainConfig, None, [f"data.root={root}", *TINY, *extra])


# -------------------------------------------------------------------------------------------- views
def test_views_crops_masks_and_determinism():
    coord, color, normal = _scene(0)
    cfg = ViewConfig(max_points=100000)
    sv = make_scene_views(coord, color, normal, cfg, np.random.default_rng(3), mask_size=0.2, mask_ratio=0.5)
    assert len(sv.globals_) == 2 and len(sv.masked) == 2 and len(sv.locals_) == 4
    # reference: points left after the scene-level 2 cm grid sampling
    n = len(np.unique(np.floor((coord - coord.min(0)) / 0.02).astype(np.int64), axis=0))
    origin_set = {tuple(r) for r in coord.astype(np.float32)}
    checks = [(g, cfg.global_scale) for g in sv.globals_] + [(lv, cfg.local_scale) for lv in sv.locals_]
    for v, (lo, hi) in checks:
        # crop sizes: the crop has scale * n points; re-gridding after augmentation drops only a few
        assert 0.85 * lo * n <= len(v) <= hi * n + 1
        assert {tuple(r) for r in v.origin} <= origin_set  # original coordinates of scene points
        assert len(np.unique(v.grid_coord, axis=0)) == len(v)  # one point per voxel (spconv needs it)
        assert v.grid_coord.min() >= 0
        assert v.feat.shape == (len(v), 9)
        np.testing.assert_allclose(v.feat[:, :3], v.coord, atol=1e-6)
        assert 0 <= v.feat[:, 3:6].min() and v.feat[:, 3:6].max() <= 1
        np.testing.assert_allclose(np.linalg.norm(v.feat[:, 6:], axis=1), 1, atol=1e-5)
        # augmentation keeps distances up to the scale (0.9-1.1) and the jitter
        i, j = np.random.default_rng(0).integers(0, len(v), (2, 200))
        d_aug = np.linalg.norm(v.coord[i] - v.coord[j], axis=1)
        d_org = np.linalg.norm(v.origin[i] - v.origin[j], axis=1)
        ok = d_org > 0.2
        ratio = d_aug[ok] / d_org[ok]
        assert 0.85 < ratio.min() and ratio.max() < 1.15 and np.ptp(ratio) < 0.25
    # masked copies: subsets of their global view, mask ratio of grid patches, jitter on masked only
    for g, m in zip(sv.globals_, sv.masked):
        assert m.mask is not None and m.mask.any() and (~m.mask).any()
        key = {tuple(o): k for k, o in enumerate(g.origin)}
        rows = np.array([key[tuple(o)] for o in m.origin])
        assert len(m) >= 0.8 * len(g)
        np.testing.assert_array_equal(m.feat, g.feat[rows])
        shift = np.abs(m.coord - g.coord[rows]).max(1)
        assert shift[~m.mask].max() == 0
        assert shift[m.mask].max() <= cfg.mask_jitter_clip + 1e-6 and shift[m.mask].max() > 0
        # patches of 0.2 m on the (unjittered) coordinates: about half of them are masked
        frac = m.mask.mean()
        assert 0.25 < frac < 0.75
    # the second global view and the local views are centred inside the first global view
    major = {tuple(o) for o in sv.globals_[0].origin}
    for v in [sv.globals_[1], *sv.locals_]:
        assert len(major & {tuple(o) for o in v.origin}) > 0
    # colour jitter is shared by the two global views: the same point has the same colour in both
    g0, g1 = sv.globals_
    k0 = {tuple(o): c for o, c in zip(g0.origin, g0.feat[:, 3:6])}
    common = [(k0[tuple(o)], c) for o, c in zip(g1.origin, g1.feat[:, 3:6]) if tuple(o) in k0]
    assert len(common) > 10
    a, b = np.array(common).transpose(1, 0, 2)
    np.testing.assert_allclose(a, b, atol=1e-6)
    # deterministic given the generator
    sv2 = make_scene_views(coord, color, normal, cfg, np.random.default_rng(3), mask_size=0.2, mask_ratio=0.5)
    for v1, v2 in zip(sv.globals_ + sv.masked + sv.locals_, sv2.globals_ + sv2.masked + sv2.locals_):
        np.testing.assert_array_equal(v1.feat, v2.feat)
        np.testing.assert_array_equal(v1.grid_coord, v2.grid_coord)
    batch = collate_views([sv, sv2], 0.02)
    assert batch.teacher.num_samples == 4 and batch.masked.num_samples == 4 and batch.local.num_samples == 8
    assert batch.masked.mask is not None and batch.teacher.mask is None
    assert batch.masked_origin.shape == (len(batch.masked), 3)


def test_views_reject_tiny_or_bad_scenes():
    from common.errors import InputError

    c, col, nrm = _scene(1)
    with pytest.raises(InputError, match="scene0001"):
        make_scene_views(c[:10], col[:10], nrm[:10], ViewConfig(), np.random.default_rng(0), 0.2, 0.5,
                         name="scene0001_00")
    c = c.copy()
    c[5] = np.nan
    with pytest.raises(InputError, match="scene0001"):
        make_scene_views(c, col, nrm, ViewConfig(), np.random.default_rng(0), 0.2, 0.5, name="scene0001_00")


def test_match_views_against_brute_force():
    rng = np.random.default_rng(0)
    q = rng.random((300, 3)).astype(np.float32)
    r = rng.random((250, 3)).astype(np.float32)
    q_off, r_off = np.array([100, 300]), np.array([120, 250])
    pairs = [(0, 1), (1, 0), (1, 1)]
    qi, ri, g = match_views(q, q_off, r, r_off, pairs, radius=0.08)
    ref = []
    qs, rs = [0, 100], [0, 120]
    for qv, rv in pairs:
        for a in range(qs[qv], q_off[qv]):
            d = np.linalg.norm(r[rs[rv]: r_off[rv]] - q[a], axis=1)
            if d.min() < 0.08:
                ref.append((a, rs[rv] + int(d.argmin()), qv))
    assert sorted(zip(qi.tolist(), ri.tolist(), g.tolist())) == sorted(ref)
    assert len(ref) > 20


# ---------------------------------------------------------------------------------------- loss / ema
def _sinkhorn_numpy(logits: np.ndarray, temp: float, iters: int) -> np.ndarray:
    q = np.exp(logits.astype(np.float64) / temp).T
    k, n = q.shape
    q /= q.sum()
    for _ in range(iters):
        q /= q.sum(1, keepdims=True)
        q /= k
        q /= q.sum(0, keepdims=True)
        q /= n
    return (q * n).T


def test_sinkhorn_normalises_rows_and_columns():
    torch.manual_seed(0)
    logits = torch.randn(500, 16) * 0.5
    q = sinkhorn_knopp(logits, temp=0.1, n_iter=3)
    np.testing.assert_allclose(q.numpy(), _sinkhorn_numpy(logits.numpy(), 0.1, 3), rtol=1e-4, atol=1e-7)
    # every sample's assignment sums to 1; with enough iterations every prototype gets n/K of the mass
    torch.testing.assert_close(q.sum(1), torch.ones(500), rtol=1e-5, atol=1e-5)
    q50 = sinkhorn_knopp(logits, temp=0.1, n_iter=50)
    torch.testing.assert_close(q50.sum(0), torch.full((16,), 500 / 16), rtol=1e-4, atol=1e-4)
    # a collapsing teacher (one prototype dominating the softmax) is spread out by 3 iterations
    skew = logits.clone()
    skew[:, 0] += 2.0
    soft = torch.softmax(skew / 0.1, 1)
    q3 = sinkhorn_knopp(skew, 0.1, 3)
    assert soft.sum(0)[0] > 0.9 * 500
    assert q3.sum(0)[0] < 1.5 * 500 / 16
    assert q3.argmax(1).unique().numel() == 16


def test_distill_loss_matches_manual():
    torch.manual_seed(0)
    t = torch.softmax(torch.randn(7, 5), 1)
    s = torch.randn(7, 5)
    grp = torch.tensor([0, 0, 0, 2, 2, 2, 2])
    loss = distill_loss(t, s, 0.1, grp, 3)
    ce = -(t * torch.log_softmax(s / 0.1, 1)).sum(1)
    ref = (ce[:3].mean() + 0 + ce[3:].mean()) / 3  # view 1 has no pairs and counts as 0
    torch.testing.assert_close(loss, ref)


def test_prototype_head_outputs_cosines():
    head = PrototypeHead(12, 20, 8, 6)
    out = head(torch.randn(30, 12))
    assert out.shape == (30, 6)
    assert out.abs().max() <= 1 + 1e-5
    torch.testing.assert_close(head.prototypes().norm(dim=1), torch.ones(6))


def test_ema_update():
    torch.manual_seed(0)
    s, t = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    t0 = {k: v.clone() for k, v in t.state_dict().items()}
    ema_update(t, s, 0.9)
    for k, v in t.state_dict().items():
        torch.testing.assert_close(v, 0.9 * t0[k] + 0.1 * s.state_dict()[k])
    before = {k: v.clone() for k, v in t.state_dict().items()}
    ema_update(t, s, 1.0)
    for k, v in t.state_dict().items():
        assert torch.equal(v, before[k])
    copy_weights(t, s)
    for k, v in t.state_dict().items():
        assert torch.equal(v, s.state_dict()[k])
    with pytest.raises(ValueError):
        ema_update(t, torch.nn.Linear(4, 2, bias=False), 0.5)


def test_schedules_match_torch_one_cycle():
    total = 200
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=1.0, total_steps=total, pct_start=0.05, anneal_strategy="cos", div_factor=10.0,
        final_div_factor=1000.0, cycle_momentum=False)
    ref = []
    for _ in range(total):
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ours = [one_cycle_factor(s, total, 0.05, 10.0, 1000.0) for s in range(total)]
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-9)
    assert warmup_then_constant(0.04, 0.07, 0, 10) == pytest.approx(0.04)
    assert warmup_then_constant(0.04, 0.07, 10, 10) == pytest.approx(0.07)
    assert warmup_then_constant(0.04, 0.07, 500, 10) == pytest.approx(0.07)
    kw = dict(pct_start=0.05, div_factor=10.0, final_div_factor=1000.0, wd_start=0.04, wd_end=0.2,
              momentum_start=0.994, momentum_end=1.0, teacher_temp_start=0.04, teacher_temp_base=0.07,
              mask_size_start=0.1, mask_size_base=0.4, mask_ratio_start=0.3, mask_ratio_base=0.7,
              warmup_ratio=0.05)
    v0, vm, v1 = step_values(0, 100, **kw), step_values(5, 100, **kw), step_values(99, 100, **kw)
    assert (v0.momentum, v0.weight_decay) == pytest.approx((0.994, 0.04))
    assert (v0.mask_size, v0.mask_ratio, v0.teacher_temp) == pytest.approx((0.1, 0.3, 0.04))
    assert (vm.mask_size, vm.mask_ratio, vm.teacher_temp) == pytest.approx((0.4, 0.7, 0.07))
    assert (v1.momentum, v1.weight_decay) == pytest.approx((1.0, 0.2))


# ---------------------------------------------------------------------------------------- training
def test_layer_decay_groups(tmp_path):
    root = _write_dataset(tmp_path / "data", 2)
    tr = Pretrainer(_cfg(root, "optim.layer_decay=0.5"))
    layout = tr.student.backbone.block_layout()  # the encoder declares its blocks (depths [1, 1, 1])
    assert [name for name, _ in layout] == ["levels.0.0", "levels.1.0", "levels.2.0"]
    assert block_index("backbone.levels.2.0.conv1.weight", layout) == 2
    assert block_index("enc.enc1.block2.attn.qkv.weight", ptv3_block_layout([3, 3])) == 5
    groups = param_groups(tr.student, 0.5)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay = {id(p): g["decay"] for g in groups for p in g["params"]}
    named = dict(tr.student.named_parameters())
    assert scale[id(named["backbone.levels.2.0.conv1.weight"])] == 1.0  # last block
    assert scale[id(named["backbone.levels.0.0.conv1.weight"])] == 0.25
    assert scale[id(named["mask_head.mlp.0.weight"])] == 1.0
    assert not decay[id(named["backbone.mask_token"])] and not decay[id(named["mask_head.mlp.0.bias"])]
    assert decay[id(named["backbone.levels.0.0.conv1.weight"])]
    tr.close()


def test_layer_decay_needs_a_declared_block_layout(tmp_path, monkeypatch):
    """An encoder that declares no blocks is refused when layer-wise decay is asked for (it used to
    train silently without decay); with layer_decay=1.0 it trains, every scale 1."""
    from pointprobe.models import ENCODERS
    from pointprobe.models.sparseunet import SparseUNet
    from pointprobe.models.structure import PointEncoder

    class NoLayout(SparseUNet):
        block_layout = PointEncoder.block_layout  # declares nothing

    monkeypatch.setitem(ENCODERS, "nolayout", lambda **cfg: NoLayout(**cfg))
    root = _write_dataset(tmp_path / "data", 2)
    with pytest.raises(ConfigError, match=r"optim\.layer_decay.*declares no block layout"):
        Pretrainer(_cfg(root, "model.backbone=nolayout", "optim.layer_decay=0.5"))
    tr = Pretrainer(_cfg(root, "model.backbone=nolayout", "optim.layer_decay=1.0"))
    assert {g["lr_scale"] for g in tr.groups} == {1.0}
    tr.close()


def test_train_logs_metrics_and_exports_loadable_encoder(tmp_path):
    from pointprobe.models import encode_points, load_encoder

    root = _write_dataset(tmp_path / "data", 3)
    out = tmp_path / "run"
    res = run_pretrain(_cfg(root, "train.steps=6", "train.batch_size=2", "train.save_every=4",
                            "train.keep_encoders=true"), out)
    lines = [json.loads(s) for s in (out / "log.jsonl").read_text().splitlines()]
    # every save keeps its encoder: step 4 (save_every) and step 6 (the end), which is encoder.pth
    assert sorted(p.name for p in (out / "encoders").iterdir()) == ["step_0000004.pth", "step_0000006.pth"]
    sd_end = torch.load(out / "encoders" / "step_0000006.pth", weights_only=True)["state_dict"]
    sd_4 = torch.load(out / "encoders" / "step_0000004.pth", weights_only=True)["state_dict"]
    sd_last = torch.load(out / "encoder.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(sd_end[k], sd_last[k]) for k in sd_last)
    assert any(not torch.equal(sd_4[k], sd_last[k]) for k in sd_last)
    assert [r["step"] for r in lines] == list(range(1, 7))
    for key in ("loss", "lr", "momentum", "teacher_entropy", "feat_std", "eff_rank", "effective_batch"):
        assert all(r[key] is not None and math.isfinite(r[key]) for r in lines), key
    assert lines[0]["mask_pairs"] > 0 and lines[0]["roll_pairs"] > 0 and lines[0]["unmask_pairs"] > 0
    assert (out / "config.yaml").is_file() and res["step"] == 6
    enc = load_encoder(out / "encoder.pth")
    assert enc.arch == "sparseunet" and enc.config["drop_path"] == 0.0
    c, col, nrm = _scene(9)
    f = encode_points(enc, c, col, nrm)
    assert f.shape == (len(c), enc.feature_dim()) and torch.isfinite(f).all()


def test_ptv3_backbone_trains_and_exports(tmp_path):
    from pointprobe.models import load_encoder

    root = _write_dataset(tmp_path / "data", 2)
    out = tmp_path / "run"
    run_pretrain(_cfg(root, "model.backbone=ptv3_tiny", "model.backbone_config={}", "train.steps=2",
                      "train.batch_size=1"), out)
    enc = load_encoder(out / "encoder.pth")
    assert enc.arch == "ptv3" and enc.config["drop_path"] == 0.0 and enc.config["mask_token"]
    tr = Pretrainer(_cfg(root, "model.backbone=ptv3_tiny", "model.backbone_config={}"))
    scales = {g["lr_scale"] for g in param_groups(tr.student, 0.5)}
    assert scales == {0.25, 0.5, 1.0}  # ptv3_tiny: 3 blocks
    tr.close()


def test_frozen_prototypes_do_not_move(tmp_path):
    root = _write_dataset(tmp_path / "data", 2)
    for ratio, should_move in ((1.0, False), (0.0, True)):
        tr = Pretrainer(_cfg(root, "train.steps=2", "train.batch_size=1",
                             f"optim.freeze_prototypes_ratio={ratio}"))
        before = tr.student.mask_head.prototype_v.detach().clone()
        mlp_before = tr.student.mask_head.mlp[0].weight.detach().clone()
        tr.run()
        tr.close()
        moved = not torch.equal(before, tr.student.mask_head.prototype_v)
        assert moved == should_move
        assert not torch.equal(mlp_before, tr.student.mask_head.mlp[0].weight)


def run_and_resume(cfg, tmp_path) -> tuple:
    """(a, b, c): ``a`` trained to ``train.steps`` uninterrupted; ``b`` stopped after 2 steps and saved;
    ``c`` resumed from ``b``'s last.pth and trained to the end."""
    a = Pretrainer(cfg, tmp_path / "a")
    a.run()
    a.close()
    b = Pretrainer(cfg, tmp_path / "b")
    b.run(max_steps=2)
    b.save()
    b.close()
    c = Pretrainer(cfg, tmp_path / "b")
    c.load_state(tmp_path / "b" / "last.pth")
    assert c.step == 2
    c.run()
    c.close()
    return a, b, c


def test_resume_is_exact(tmp_path):
    root = _write_dataset(tmp_path / "data", 3)
    cfg = _cfg(root, "train.steps=4", "train.batch_size=2", "train.accum_steps=2")
    a, b, c = run_and_resume(cfg, tmp_path)
    la = [r["loss"] for r in a.history]
    lb = [r["loss"] for r in b.history] + [r["loss"] for r in c.history]
    assert la == lb
    for name, mod_a, mod_c in (("student", a.student, c.student), ("teacher", a.teacher, c.teacher)):
        sa, sc = mod_a.state_dict(), mod_c.state_dict()
        for k in sa:
            assert torch.equal(sa[k], sc[k]), f"{name}.{k}"


@pytest.mark.slow
def test_cli_resumes_automatically_and_configs_load(tmp_path):
    from pointprobe.cli import main

    for name in ("sonata_base", "sonata_small", "pretrain_bench_cpu", "pretrain_demo"):
        cfg = load_config(PretrainConfig, ROOT / "configs" / "point" / f"{name}.yaml")
        assert cfg.train.steps > 0, name
    root = _write_dataset(tmp_path / "data", 2)
    out = tmp_path / "run"
    args = ["pretrain", "--config", str(ROOT / "configs/point/pretrain_demo.yaml"), f"data.root={root}",
            f"out={out}", *TINY, "train.batch_size=1"]
    assert main([*args, "train.steps=2"]) == 0
    assert main([*args, "train.steps=3"]) == 0  # resumes from out/last.pth: one more step
    steps = [json.loads(s)["step"] for s in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert main(["pretrain", f"data.root={root}", f"out={out}", "train.batch_size=3",
                 "train.accum_steps=2"]) == 2
    with pytest.raises(ConfigError):
        run_pretrain(_cfg(root, "model.upcast_steps=5"), tmp_path / "x")


# ---------------------------------------------------------------------------------------- DDP
_DDP_SCRIPT = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
import torch
torch.set_num_threads(1)
from common import dist
from common.config import load_config
from pointprobe.pretrain.config import PretrainConfig
from pointprobe.pretrain.trainer import Pretrainer
dist.init_from_env()
cfg = load_config(PretrainConfig, None, json.loads(sys.argv[1]))
tr = Pretrainer(cfg)
tr.run()
tr.close()
if dist.is_main():
    sd = tr.teacher.state_dict()
    json.dump({"loss": [r["loss"] for r in tr.history],
               "checksum": float(sum(v.double().abs().sum() for v in sd.values())),
               "param": tr.student.backbone.levels[0][0].conv1.weight.flatten()[:20].tolist()},
              open(sys.argv[2], "w"))
dist.cleanup()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(world: int, overrides: list[str], out: Path) -> dict:
    script = out.parent / "ddp_run.py"
    script.write_text(_DDP_SCRIPT)
    port = _free_port()
    procs = []
    for r in range(world):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(world), LOCAL_RANK=str(r),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        procs.append(subprocess.Popen([sys.executable, str(script), json.dumps(overrides), str(out)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    for p in procs:
        txt = p.communicate(timeout=120)[0].decode()
        assert p.returncode == 0, txt[-3000:]
    return json.loads(out.read_text())


@pytest.mark.dist
@pytest.mark.slow
def test_ddp_two_processes_match_one(tmp_path):
    root = _write_dataset(tmp_path / "data", 3, density=600.0)
    ov = [f"data.root={root}", *TINY, "train.steps=2", "train.batch_size=2", "views.max_points=800"]
    one = _launch(1, ov, tmp_path / "one.json")
    two = _launch(2, ov, tmp_path / "two.json")
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(two["param"], one["param"], rtol=1e-3, atol=1e-6)
    assert two["checksum"] == pytest.approx(one["checksum"], rel=1e-5)
